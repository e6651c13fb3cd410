import diagnosticsChannel from 'node:diagnostics_channel'
import { test, type Test } from 'tap'
import {
  CHANNELS, type ClientOptions, HttpStatusError, ResponseTooLargeError, type RetryEvent, type RetrySkippedEvent,
  TimeoutError, UpstreamError
} from '../../plugin'
import type { HttpClient } from '../../lib/api/http-client'
import '../helpers/fastify-types'
import { faultUpstreamFor, refusedPort } from '../helpers/fault-upstream'
import { registeredClient } from '../helpers/upstream'

// Fast retries and short attempts, so that every kind settles in well under a second.
const FAST: ClientOptions = {
  baseUrl: 'http://127.0.0.1:1',
  timeout: 300,
  totalTimeout: 5_000,
  retry: { maxAttempts: 3, backoffInitialMs: 1, backoffMaxMs: 5 },
  circuitBreaker: false
}

let clientCount = 0

/** A client named uniquely (the diagnostics channels are process-wide) in a real Fastify app. */
async function kindsClient (t: Test, baseUrl: string, options: Partial<ClientOptions> = {}): Promise<HttpClient> {
  return await registeredClient(t, `kinds${++clientCount}`, { ...FAST, ...options, baseUrl })
}

async function rejectionOf (promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected a rejection')
}

function causeCode (error: unknown): unknown {
  return ((error as { cause?: { code?: unknown } }).cause)?.code
}

/** Retry and retry-skipped events of one client, in order. */
function recordEvents (t: Test, client: HttpClient): Array<RetryEvent | RetrySkippedEvent> {
  const events: Array<RetryEvent | RetrySkippedEvent> = []
  const listener = (message: unknown): void => {
    if ((message as RetryEvent).client === client.name) events.push(message as RetryEvent)
  }
  diagnosticsChannel.subscribe(CHANNELS.retry, listener)
  diagnosticsChannel.subscribe(CHANNELS.retrySkipped, listener)
  t.teardown(() => {
    diagnosticsChannel.unsubscribe(CHANNELS.retry, listener)
    diagnosticsChannel.unsubscribe(CHANNELS.retrySkipped, listener)
  })
  return events
}

/** Polls until the pool has nothing running or queued, for at most 3 s. */
async function poolIdle (client: HttpClient): Promise<boolean> {
  for (let i = 0; i < 300; i++) {
    const pool = client.stats().pool
    if (pool !== undefined && pool.running === 0 && pool.pending === 0 && pool.queued === 0) return true
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return false
}

test('connection refused: GET and even POST are retried (nothing reached the upstream), then UpstreamError', async (t) => {
  const port = await refusedPort()
  const client = await kindsClient(t, `http://127.0.0.1:${port}`)

  const get = await rejectionOf(client.get('/a'))
  t.ok(get instanceof UpstreamError, 'GET: UpstreamError')
  t.equal(causeCode(get), 'ECONNREFUSED')
  t.equal((get as UpstreamError).attempts, 3, 'GET: every attempt made')

  const post = await rejectionOf(client.post('/a', { json: { n: 1 } }))
  t.ok(post instanceof UpstreamError, 'POST: UpstreamError')
  t.equal((post as UpstreamError).attempts, 3, 'POST without a key retried: it provably never left')
  t.equal(client.stats().failures, 2)
})

test('reset before the response: GET retried to success; POST without key sent once', async (t) => {
  // The first request of each call is reset; the next one is answered.
  const upstream = await faultUpstreamFor(t, { plan: ({ attempt }) => attempt === 0 ? 'reset-before-response' : 'ok' })
  const client = await kindsClient(t, upstream.url)

  const res = await client.get('/r?call=1')
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 2, 'one retry')
  t.same(await res.json(), { ok: true })
  t.equal(upstream.byMarker.get('1')?.seen, 2, 'upstream saw the GET twice')

  const post = await rejectionOf(client.post('/r?call=2', { json: { n: 1 } }))
  t.ok(post instanceof UpstreamError, 'POST: UpstreamError')
  t.equal((post as UpstreamError).attempts, 1)
  t.equal(causeCode(post), 'ECONNRESET')
  t.equal(upstream.byMarker.get('2')?.seen, 1, 'upstream saw the POST once')

  const keyed = await client.post('/r?call=3', { json: { n: 1 }, idempotencyKey: true })
  t.equal(keyed.statusCode, 200, 'POST with an Idempotency-Key retried to success')
  t.equal(keyed.attempts, 2)
  const keys = upstream.byMarker.get('3')?.keys ?? []
  t.equal(keys.length, 2)
  t.equal(keys[0], keys[1], 'the same key on both attempts')
  t.equal(upstream.byKind['reset-before-response'], 3)
})

test('reset in the middle of the body: the 200 resolves, reading the body fails with UpstreamError', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url)

  const res = await client.get('/fault/reset-mid-body?call=1')
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 1, 'headers came: the call is answered, no retry')
  const error = await rejectionOf(res.text())
  t.ok(error instanceof UpstreamError, 'reading: UpstreamError')
  t.match(causeCode(error), /^UND_ERR_/)
  t.equal(upstream.requests, 1)
  t.ok(await poolIdle(client), 'the pool has nothing running')
})

test('headers that never come: TimeoutError per attempt; GET retried, POST sent once', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url, { timeout: 400, retry: { maxAttempts: 2, backoffInitialMs: 1, backoffMaxMs: 5 } })

  const get = await rejectionOf(client.get('/fault/no-headers?call=1'))
  t.ok(get instanceof TimeoutError, 'GET: TimeoutError')
  t.equal((get as TimeoutError).kind, 'attempt')
  t.equal((get as TimeoutError).attempts, 2)
  t.equal(upstream.byMarker.get('1')?.seen, 2)

  const post = await rejectionOf(client.post('/fault/no-headers?call=2', { body: 'x' }))
  t.ok(post instanceof TimeoutError, 'POST: TimeoutError')
  t.equal((post as TimeoutError).attempts, 1, 'a POST that may have been processed is not sent again')
  t.equal(upstream.byMarker.get('2')?.seen, 1)
  t.ok(await poolIdle(client), 'timed-out attempts do not leave their sockets busy')
})

test('a body that stalls: the attempt timeout bounds reading it', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url, { timeout: 200 })

  const started = Date.now()
  const res = await client.get('/fault/stall-body')
  t.equal(res.statusCode, 200)
  const error = await rejectionOf(res.text())
  const elapsed = Date.now() - started
  t.ok(error instanceof TimeoutError, 'reading: TimeoutError')
  t.equal((error as TimeoutError).kind, 'attempt')
  t.ok(elapsed >= 150 && elapsed < 200 + 2_000, `ended by the timeout (${elapsed} ms)`)
  t.equal(upstream.requests, 1)
  t.ok(await poolIdle(client), 'the stalled socket is not left busy')
})

test('half-closed socket: GET retried until attempts run out, then UpstreamError; POST sent once', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url)

  const get = await rejectionOf(client.get('/fault/half-close?call=1'))
  t.ok(get instanceof UpstreamError, 'GET: UpstreamError')
  t.equal((get as UpstreamError).attempts, 3)
  t.equal(causeCode(get), 'UND_ERR_SOCKET')
  t.equal(upstream.byMarker.get('1')?.seen, 3)

  const post = await rejectionOf(client.post('/fault/half-close?call=2', { json: {} }))
  t.ok(post instanceof UpstreamError, 'POST: UpstreamError')
  t.equal((post as UpstreamError).attempts, 1)
  t.equal(upstream.byMarker.get('2')?.seen, 1)
})

test('malformed status line and garbage: UpstreamError at once, not retried', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url)

  for (const kind of ['malformed-status', 'garbage']) {
    const error = await rejectionOf(client.get(`/fault/${kind}?call=${kind}`))
    t.ok(error instanceof UpstreamError, `${kind}: UpstreamError`)
    t.equal((error as UpstreamError).attempts, 1, `${kind}: a protocol error is not transient`)
    t.equal(((error as Error).cause as Error).name, 'HTTPParserError', `${kind}: the parser's error as cause`)
    t.equal(upstream.byMarker.get(kind)?.seen, 1)
  }
  t.ok(await poolIdle(client))
})

test('a response far over maxResponseBytes: ResponseTooLargeError, never the whole body in memory', async (t) => {
  const upstream = await faultUpstreamFor(t, { oversizeBytes: 4 * 1024 * 1024 })
  const client = await kindsClient(t, upstream.url, { maxResponseBytes: 64 * 1024 })

  // A content-length over the limit fails the call at once, before the body is read.
  const announced = await rejectionOf(client.get('/fault/oversize'))
  t.ok(announced instanceof ResponseTooLargeError, 'oversize: the call rejects with ResponseTooLargeError')
  t.equal((announced as ResponseTooLargeError).limit, 64 * 1024)
  // A chunked 2xx resolves with its body unread (it may be streamed); reading it past the limit fails.
  const res = await client.get('/fault/oversize-chunked')
  t.equal(res.statusCode, 200)
  const error = await rejectionOf(res.text())
  t.ok(error instanceof ResponseTooLargeError, 'oversize-chunked: reading rejects with ResponseTooLargeError')
  t.equal((error as ResponseTooLargeError).limit, 64 * 1024)

  // A non-2xx is read before the call resolves, so the call itself rejects, and is not retried.
  const failed = await rejectionOf(client.get('/fault/oversize-error?call=e'))
  t.ok(failed instanceof ResponseTooLargeError, '502 with a huge body: the call rejects')
  t.equal((failed as ResponseTooLargeError).attempts, 1)
  t.equal(upstream.byMarker.get('e')?.seen, 1, 'not retried')
  t.equal(upstream.requests, 3)
  t.ok(await poolIdle(client))
})

test('503 storm without Retry-After: GET resolves with the last 503 after maxAttempts; POST gets one attempt', async (t) => {
  const upstream = await faultUpstreamFor(t)
  const client = await kindsClient(t, upstream.url)

  const res = await client.get('/fault/503?call=1')
  t.equal(res.statusCode, 503, 'a non-2xx resolves')
  t.equal(res.attempts, 3)
  t.throws(() => res.raiseForStatus(), HttpStatusError)
  t.equal(upstream.byMarker.get('1')?.seen, 3)

  const post = await client.post('/fault/503?call=2', { json: {} })
  t.equal(post.attempts, 1, 'POST without key: a 503 may have been processed')
  t.equal(upstream.byMarker.get('2')?.seen, 1)
})

test('503 with Retry-After: the wait is the header\'s, and a wait past totalTimeout is not made', async (t) => {
  const upstream = await faultUpstreamFor(t, { retryAfter: '1' })
  const client = await kindsClient(t, upstream.url, { retry: { maxAttempts: 2, backoffInitialMs: 1, backoffMaxMs: 5 } })
  const events = recordEvents(t, client)

  const res = await client.get('/fault/503-retry-after?call=1')
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 2)
  t.equal((events[0] as RetryEvent).waitMs, 1_000, 'waited what Retry-After asked, not the 1 ms backoff')

  const short = await client.get('/fault/503-retry-after?call=2', { totalTimeout: 500 })
  t.equal(short.attempts, 1, 'a 1 s wait would end past the 500 ms totalTimeout')
  t.equal((events[events.length - 1] as RetrySkippedEvent).skipped, 'deadline')
  t.equal(upstream.byKind['503-retry-after'], 3)
})

test('429 storm: even a POST without key is retried (refused unprocessed); Retry-After past the deadline ends it', async (t) => {
  const upstream = await faultUpstreamFor(t, { retryAfter: '60' })
  const client = await kindsClient(t, upstream.url)

  const post = await client.post('/fault/429?call=1', { json: {} })
  t.equal(post.statusCode, 429)
  t.equal(post.attempts, 3)
  t.equal(upstream.byMarker.get('1')?.seen, 3)
  t.equal(upstream.processed('1'), 0, 'none of them processed')

  const started = Date.now()
  const waited = await client.get('/fault/429-retry-after?call=2')
  t.equal(waited.attempts, 1, 'Retry-After: 60 is past totalTimeout')
  t.ok(Date.now() - started < 2_000, 'and no wait was made')
})

test('keep-alive socket closed by the server as the client reuses it: GET retried to success, POST not resent', async (t) => {
  // The socket is closed only when the next request arrives on it, so the race is lost every time.
  const upstream = await faultUpstreamFor(t, { keepAliveCloseMs: 60_000 })
  const client = await kindsClient(t, upstream.url, { pool: { connections: 1 } })

  const first = await client.get('/fault/keepalive-race?call=1')
  t.equal(first.statusCode, 200)
  await first.text()
  const reused = await client.get('/?call=2')
  t.equal(reused.statusCode, 200, 'GET on the dying socket: succeeds')
  t.equal(reused.attempts, 2, 'through one retry on a fresh socket')
  await reused.text()
  t.equal(upstream.droppedOnReuse, 1)

  await (await client.get('/fault/keepalive-race?call=3')).text()
  const post = await rejectionOf(client.post('/?call=4', { json: {} }))
  t.ok(post instanceof UpstreamError, 'POST on the dying socket: UpstreamError')
  t.equal((post as UpstreamError).attempts, 1, 'not sent again: the server may have read it')
  t.equal(upstream.droppedOnReuse, 2)
  t.equal(upstream.processed('4'), 0)
})

test('keep-alive close racing with reuse, many times: every GET succeeds', async (t) => {
  const upstream = await faultUpstreamFor(t, { keepAliveCloseMs: 1 })
  const client = await kindsClient(t, upstream.url, { pool: { connections: 2 } })

  let ok = 0
  let attempts = 0
  for (let i = 0; i < 100; i++) {
    const res = await client.get(i % 2 === 0 ? '/fault/keepalive-race' : '/')
    await res.text()
    if (res.statusCode === 200) ok++
    attempts += res.attempts
  }
  t.equal(ok, 100, 'all 100 calls succeed')
  t.comment(`100 calls, ${attempts} attempts, ${upstream.droppedOnReuse} requests dropped on a closing socket`)
})
