import { Readable } from 'node:stream'
import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import {
  CHANNELS, ClientClosedError, createHttpClient, HttpStatusError, type ServerSentEvent, type StreamResumedEvent, UpstreamError, TimeoutError
} from '../plugin'
import { drain } from './helpers/drain'
import { upstreamFor } from './helpers/upstream'
import { published } from './helpers/wait'

function openEvents (res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  res.flushHeaders()
}

const FAST_RETRY = { backoffInitialMs: 1, backoffMaxMs: 5, jitter: 'none' } as const

test('events() parses Server-Sent Events by the WHATWG rules', async (t) => {
  const upstream = await upstreamFor(t, async (_req, res) => {
    openEvents(res)
    res.write(Buffer.from([0xEF, 0xBB, 0xBF]))
    res.write(': a comment\n\ndata: one\n\n')
    res.write('event: update\ndata: two\ndata:  three\nid: 7\nretry: 1500\nfoo: bar\n\n')
    res.write('data\n\n')
    res.write('id: 8\u0000\nretry: soon\ndata: four\r')
    await sleep(20)
    res.write('\n\r\n')
    res.write('id\r\rretry: 10\r\n\r\n')
    res.write('data: no blank line after me')
    res.end()
  })
  const client = createHttpClient({ name: 'sse', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/')).events())
  t.equal(error, null)
  const expected: ServerSentEvent[] = [
    { event: 'message', data: 'one', id: undefined, retry: undefined },
    { event: 'update', data: 'two\n three', id: '7', retry: 1500 },
    { event: 'message', data: '', id: '7', retry: undefined },
    { event: 'message', data: 'four', id: '7', retry: undefined }
  ]
  t.same(items, expected, 'comments skipped, data joined, the id kept, a NUL id and a bad retry ignored, CR and a CRLF cut in two read as breaks, an unfinished event dropped')
})

/** An event server that honours `Last-Event-ID`: event n has id n and data `e<n>`; `plan` says what each connection does. */
function eventServer (plan: (index: number, from: number, res: ServerResponse) => Promise<void> | void) {
  return async (req: { headers: Record<string, unknown> }, res: ServerResponse, _hit: unknown, index: number): Promise<void> => {
    const from = Number(req.headers['last-event-id'] ?? 0) + 1
    await plan(index, from, res)
  }
}

function sendEvents (res: ServerResponse, from: number, count: number): void {
  for (let n = from; n < from + count; n++) res.write(`id: ${n}\ndata: e${n}\n\n`)
}

test('resume: after a reset the stream opens again with Last-Event-ID and the consumer sees one sequence', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    openEvents(res)
    sendEvents(res, from, 3)
    if (index === 0) {
      res.write('id: 99\ndata: never fin')
      await sleep(30)
      res.socket?.destroy()
    } else {
      res.end()
    }
  }) as never)
  const client = createHttpClient({ name: 'resume', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const resumed = published<StreamResumedEvent>(t, CHANNELS.streamResumed)
  const stream = await client.stream('/feed', { method: 'POST', json: { topic: 'a' }, headers: { 'x-tenant': 't1' }, resume: true })
  const { items, error } = await drain(stream.events())
  t.equal(error, null, 'a clean end after the reconnect')
  t.same(items.map((event) => event.data), ['e1', 'e2', 'e3', 'e4', 'e5', 'e6'])
  t.equal(upstream.hits.length, 2)
  const again = upstream.hits[1]
  t.equal(again.headers['last-event-id'], '3', 'the last complete event id, not the unfinished one')
  t.equal(again.method, 'POST')
  t.equal(again.body, '{"topic":"a"}', 'the same body')
  t.equal(again.headers['x-tenant'], 't1', 'the same headers')
  t.equal(client.stats().retries, 1, 'a reconnect is a retry')
  t.equal(resumed.length, 1)
  t.match(resumed[0], { client: 'resume', method: 'POST', path: '/feed', attempt: 1, lastEventId: '3' })
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
})

test("resume waits no less than the server's retry:", async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    openEvents(res)
    if (index === 0) res.write('retry: 300\n\n')
    sendEvents(res, from, 2)
    if (index === 0) {
      await sleep(20)
      res.socket?.destroy()
    } else {
      res.end()
    }
  }) as never)
  const client = createHttpClient({ name: 'floor', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const resumed = published<StreamResumedEvent>(t, CHANNELS.streamResumed)
  const started = Date.now()
  const { items } = await drain((await client.stream('/', { resume: { maxReconnects: 1 } })).events())
  t.same(items.map((event) => event.id), ['1', '2', '3', '4'])
  t.equal(resumed[0].waitMs, 300)
  t.ok(Date.now() - started >= 280, 'it waited')
})

test('resume after an idle timeout; a 204 on a reconnect ends the stream cleanly', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    if (index === 2) {
      res.writeHead(204).end()
      return
    }
    openEvents(res)
    sendEvents(res, from, 1)
    if (index === 1) {
      await sleep(20)
      res.socket?.destroy()
    }
  }) as never)
  const client = createHttpClient({ name: 'idle', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { resume: true, idleTimeout: 150 })).events())
  t.equal(error, null)
  t.same(items.map((event) => event.id), ['1', '2'])
  t.equal(upstream.hits[2].headers['last-event-id'], '2')
  t.equal(client.stats().retries, 2)
})

test('a reconnect answered with another status ends the stream with HttpStatusError', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    if (index === 1) {
      res.writeHead(500).end('down')
      return
    }
    openEvents(res)
    sendEvents(res, from, 2)
    await sleep(20)
    res.socket?.destroy()
  }) as never)
  const client = createHttpClient({ name: 'status', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { resume: true })).events())
  t.equal(items.length, 2)
  t.ok(error instanceof HttpStatusError)
  t.equal((error as HttpStatusError).upstreamStatusCode, 500)
  t.equal((error as HttpStatusError).delivered, 2)
  t.equal(upstream.hits.length, 2, 'a reconnect is sent once, not retried')
})

test('maxReconnects failed reconnects in a row end the stream with the last failure', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    openEvents(res)
    if (index === 0) sendEvents(res, from, 1)
    await sleep(20)
    res.socket?.destroy()
  }) as never)
  const client = createHttpClient({ name: 'giveup', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { resume: { maxReconnects: 2 } })).events())
  t.equal(items.length, 1)
  t.ok(error instanceof UpstreamError)
  t.equal((error as UpstreamError).delivered, 1)
  t.equal(upstream.hits.length, 3, 'the first connection and two reconnects')
  t.equal(client.stats().retries, 2)
})

test('a reconnect that fails to open counts toward maxReconnects', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    if (index === 0) {
      openEvents(res)
      sendEvents(res, from, 1)
      await sleep(20)
      res.socket?.destroy()
      return
    }
    res.socket?.destroy()
  }) as never)
  const client = createHttpClient({ name: 'refused', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const { error } = await drain((await client.stream('/', { resume: { maxReconnects: 3 } })).events())
  t.ok(error instanceof UpstreamError)
  t.equal(upstream.hits.length, 4)
})

test('no resume without an event id, for a body sent once, without the option, or when the budget or the circuit says no', async (t) => {
  const upstream = await upstreamFor(t, async (req, res) => {
    openEvents(res)
    res.write(req.url === '/anonymous' ? 'data: x\n\n' : 'id: 1\ndata: x\n\n')
    await sleep(20)
    res.socket?.destroy()
  })
  const client = createHttpClient({ name: 'noresume', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  for (const [path, options] of [
    ['/anonymous', { resume: true }],
    ['/once', { resume: true, method: 'POST', body: Readable.from(['chunk']) }],
    ['/off', {}]
  ] as const) {
    const before = upstream.hits.length
    const { items, error } = await drain((await client.stream(path, options)).events())
    t.equal(items.length, 1, path)
    t.ok(error instanceof UpstreamError, `${path}: ends with the failure`)
    t.equal(upstream.hits.length, before + 1, `${path}: no reconnect`)
  }

  const stingy = createHttpClient({ name: 'stingy', baseUrl: upstream.url, retry: { ...FAST_RETRY, budget: { ratio: 0, minPerSecond: 0 } } })
  t.teardown(() => stingy.close())
  t.ok((await drain((await stingy.stream('/', { resume: true })).events())).error instanceof UpstreamError)
  t.equal(stingy.stats().retriesDenied, 1, 'the budget refused the reconnect')

  const fragile = createHttpClient({ name: 'fragile', baseUrl: upstream.url, retry: FAST_RETRY, circuitBreaker: { failureThreshold: 1 } })
  t.teardown(() => fragile.close())
  t.ok((await drain((await fragile.stream('/', { resume: true })).events())).error instanceof UpstreamError)
  t.equal(fragile.stats().circuit, 'open')
  t.equal(fragile.stats().retries, 0, 'no reconnect while the circuit is open')
})

test('close, the caller and the consumer cut a wait between two connections', async (t) => {
  const upstream = await upstreamFor(t, async (_req, res) => {
    openEvents(res)
    res.write('id: 1\ndata: x\n\n')
    await sleep(20)
    res.socket?.destroy()
  })
  const slow = { backoffInitialMs: 5_000, backoffMaxMs: 5_000, jitter: 'none' } as const

  const closing = createHttpClient({ name: 'closing', baseUrl: upstream.url, retry: slow })
  const reading = drain((await closing.stream('/', { resume: true })).events())
  await sleep(150)
  const started = Date.now()
  await closing.close()
  const { items, error } = await reading
  t.equal(items.length, 1)
  t.ok(error instanceof ClientClosedError, 'close ends the wait with ClientClosedError')
  t.ok(Date.now() - started < 2_000)

  const client = createHttpClient({ name: 'waits', baseUrl: upstream.url, retry: slow })
  t.teardown(() => client.close())
  const controller = new AbortController()
  const aborted = drain((await client.stream('/', { resume: true, signal: controller.signal })).events())
  await sleep(150)
  const reason = new Error('gone')
  controller.abort(reason)
  t.equal((await aborted).error, reason, "the caller's reason, as given")

  const stream = await client.stream('/', { resume: true })
  const iterator = stream.events()
  t.equal((await iterator.next()).value?.id, '1')
  const waiting = iterator.next()
  await sleep(150)
  t.equal(client.stats().streams, 1, 'waiting to reconnect, the stream is still open')
  t.equal(client.stats().inFlight, 1, 'and keeps its place in the limit')
  stream.close()
  t.same(await waiting, { done: true, value: undefined }, 'close() ends it cleanly')
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
  t.equal(upstream.hits.length, 3, 'no reconnect was sent')
})

test("the caller's abort while a reconnect is opening ends the stream with its reason", async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    if (index === 1) await sleep(2_000)
    openEvents(res)
    sendEvents(res, from, 1)
    await sleep(20)
    res.socket?.destroy()
  }) as never)
  const client = createHttpClient({ name: 'opening', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const controller = new AbortController()
  const reading = drain((await client.stream('/', { resume: true, signal: controller.signal })).events())
  for (let i = 0; i < 100 && upstream.hits.length < 2; i++) await sleep(20)
  const reason = new Error('left while reconnecting')
  controller.abort(reason)
  const { items, error } = await reading
  t.equal(items.length, 1)
  t.equal(error, reason)
})

test('resume with retries off waits the default backoff; maxDuration is no reason to resume', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    openEvents(res)
    sendEvents(res, from, 1)
    if (index === 0) {
      await sleep(20)
      res.socket?.destroy()
    } else if (index === 1) {
      res.end()
    }
  }) as never)
  const client = createHttpClient({ name: 'noretry', baseUrl: upstream.url, retry: false })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { resume: true })).events())
  t.equal(error, null)
  t.same(items.map((event) => event.id), ['1', '2'])
  const bounded = await drain((await client.stream('/', { resume: true, maxDuration: 150 })).events())
  t.ok(bounded.error instanceof TimeoutError)
  t.equal((bounded.error as TimeoutError).kind, 'total')
  t.equal(upstream.hits.length, 3, 'no reconnect after maxDuration')
})

test('closing while a reconnect is opening ends the stream cleanly', async (t) => {
  const upstream = await upstreamFor(t, eventServer(async (index, from, res) => {
    if (index === 1) await sleep(1_000)
    openEvents(res)
    sendEvents(res, from, 1)
    await sleep(20)
    res.socket?.destroy()
  }) as never)
  const client = createHttpClient({ name: 'closeopen', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const stream = await client.stream('/', { resume: true })
  const reading = drain(stream.events())
  for (let i = 0; i < 100 && upstream.hits.length < 2; i++) await sleep(20)
  stream.close()
  const { items, error } = await reading
  t.equal(error, null)
  t.equal(items.length, 1)
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
})

test('a stream with resume still fails at once on an idle timeout without an id', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    openEvents(res)
    res.write('data: x\n\n')
  })
  const client = createHttpClient({ name: 'quiet', baseUrl: upstream.url, retry: FAST_RETRY })
  t.teardown(() => client.close())
  const { error } = await drain((await client.stream('/', { resume: true, idleTimeout: 100 })).events())
  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'idle')
})

test('a reconnect the rate limit refuses is a retry not made: the stream ends with its failure and the budget gets the retry back', async (t) => {
  const upstream = await upstreamFor(t, async (_req, res) => {
    openEvents(res)
    res.write('id: 1\ndata: x\n\n')
    await sleep(20)
    res.socket?.destroy()
  })
  // One retry in the budget (0.1 a second over its 10 s); one token at a time, none waited for.
  const client = createHttpClient({
    name: 'limited',
    baseUrl: upstream.url,
    retry: { ...FAST_RETRY, budget: { ratio: 0, minPerSecond: 0.1 } },
    rateLimit: { perSecond: 10, burst: 1, maxWaitMs: 0 }
  })
  t.teardown(() => client.close())
  for (const round of [1, 2]) {
    const { items, error } = await drain((await client.stream('/', { resume: true })).events())
    t.equal(items.length, 1, `stream ${round}: its event`)
    t.ok(error instanceof UpstreamError, `stream ${round}: ends with the reset, not the refusal`)
    await sleep(150)
  }
  const stats = client.stats()
  t.equal(stats.retries, 2, 'each stream tried to reconnect')
  t.equal(stats.retriesDenied, 0, 'the budget had the first reconnect back for the second')
  t.equal(upstream.hits.length, 2, 'no reconnect was sent')
})
