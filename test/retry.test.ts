import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { TimeoutError, UpstreamError } from '../lib/errors'
import { type HttpClient } from '../lib/api/http-client'
import type { ClientOptions } from '../lib/types'
import { CLOCK_START, ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { clientFor, type Handler, sendJson, refusedPort, upstreamFor } from './helpers/upstream'
import { dispatcherOption, usesGivenDispatcher } from './helpers/dispatcher'

/** Timeouts that only a hung call reaches, so a busy machine cannot fail these tests. */
const PATIENT = { timeout: 60_000, totalTimeout: 120_000 }

/** Waits short enough that the real clock does not slow the tests down. */
const QUICK = { backoffInitialMs: 1, backoffMaxMs: 2, jitter: 'none' } as const
const ATTEMPT_TIMEOUT = 50_000

function svcClient (t: Test, baseUrl: string, options: ClientOptions = {}): HttpClient {
  return clientFor(t, { name: 'svc', baseUrl, circuitBreaker: false, ...PATIENT, ...dispatcherOption(), ...options })
}

function manualClient (t: Test, baseUrl: string, clock: ManualClock, options: ClientOptions = {}): HttpClient {
  const client = clockedClient({ name: 'svc', baseUrl, circuitBreaker: false, timeout: ATTEMPT_TIMEOUT, totalTimeout: 100_000, ...dispatcherOption(), ...options }, clock)
  t.teardown(() => client.close())
  return client
}

/** The waits between attempts that a call asked of the clock (attempt timeouts left out). */
function waits (clock: ManualClock): number[] {
  return clock.requested.filter((ms) => ms !== ATTEMPT_TIMEOUT)
}

/** Answers the scripted statuses in turn, then 200. */
function script (...statuses: Array<number | [number, Record<string, string>]>): Handler {
  return (_req, res, _hit, index) => {
    const step = statuses[index]
    if (step === undefined) return sendJson(res, 200, { ok: true, hit: index + 1 })
    const [status, headers] = Array.isArray(step) ? step : [step, {}]
    sendJson(res, status, { error: status }, headers)
  }
}

test('503, 503, 200 resolves with the 200 after 3 attempts', async (t) => {
  const upstream = await upstreamFor(t, script(503, 503))
  const client = svcClient(t, upstream.url, { retry: QUICK })
  const res = await client.get('/thing')
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  t.same(await res.json(), { ok: true, hit: 3 })
  t.equal(upstream.hits.length, 3)
  t.same(upstream.hits.map((hit) => hit.url), ['/thing', '/thing', '/thing'])
  const stats = client.stats()
  t.equal(stats.retries, 2)
  t.equal(stats.requests, 1)
  t.equal(stats.successes, 1)
  t.equal(stats.failures, 0)
  t.equal(stats.inFlight, 0)
})

test('a refused connection is retried, then rejects with UpstreamError carrying ECONNREFUSED', async (t) => {
  const port = await refusedPort()
  const client = svcClient(t, `http://127.0.0.1:${port}`, { retry: { ...QUICK, maxAttempts: 4 } })
  const error = await client.get('/x').then(() => null, (error: unknown) => error)
  t.ok(error instanceof UpstreamError, 'UpstreamError')
  const upstreamError = error as UpstreamError
  t.equal(upstreamError.code, 'FRH_UPSTREAM')
  t.equal(upstreamError.attempts, 4)
  t.equal(upstreamError.clientName, 'svc')
  t.equal(upstreamError.method, 'GET')
  t.equal(upstreamError.path, '/x')
  t.equal((upstreamError.cause as { code?: string }).code, 'ECONNREFUSED')
  t.equal(client.stats().retries, 3)
  t.equal(client.stats().failures, 1)
})

test('a hanging upstream: each attempt times out and is retried, then TimeoutError kind attempt', async (t) => {
  const held: Array<() => void> = []
  const upstream = await upstreamFor(t, (_req, res) => { held.push(() => res.end()) })
  const clock = new ManualClock()
  const client = manualClient(t, upstream.url, clock, { timeout: 1_000, retry: { maxAttempts: 2, backoffInitialMs: 100, jitter: 'none' } })
  const outcome = client.get('/slow').then(() => null, (error: unknown) => error)

  await until(() => upstream.hits.length === 1, 'the first attempt')
  clock.advance(1_000)
  await untilTimer(clock, 100)
  t.equal(upstream.hits.length, 1)
  clock.advance(100)
  await until(() => upstream.hits.length === 2, 'the second attempt')
  clock.advance(1_000)

  const error = await outcome
  t.ok(error instanceof TimeoutError, 'TimeoutError')
  t.equal((error as TimeoutError).code, 'FRH_TIMEOUT')
  t.equal((error as TimeoutError).kind, 'attempt')
  t.equal((error as TimeoutError).timeoutMs, 1_000)
  t.equal((error as TimeoutError).attempts, 2)
  t.same(clock.requested, [1_000, 100, 1_000])
  t.equal(client.stats().retries, 1)
  t.equal(client.stats().failures, 1)
  await until(() => client.stats().pool?.running === 0, 'the aborted attempt to leave the pool')
})

test('Retry-After on 429 and 503 sets the wait, in seconds or as an HTTP-date', async (t) => {
  const forms: Array<[string, string, number]> = [
    ['delta-seconds', '1', 1_000],
    ['HTTP-date', new Date(CLOCK_START + 3_000).toUTCString(), 3_000]
  ]
  for (const status of [429, 503]) {
    for (const [form, value, expected] of forms) {
      t.test(`${status} with ${form}`, async (t) => {
        const upstream = await upstreamFor(t, script([status, { 'retry-after': value }]))
        const clock = new ManualClock()
        const client = manualClient(t, upstream.url, clock, { retry: { backoffInitialMs: 100, backoffMaxMs: 200, jitter: 'none' } })
        const pending = client.get('/limited')
        await untilTimer(clock, expected)
        clock.advance(expected - 1)
        await sleep(20)
        t.equal(upstream.hits.length, 1, 'no retry before the wait is over')
        clock.advance(1)
        const res = await pending
        t.equal(res.statusCode, 200)
        t.equal(res.attempts, 2)
        t.same(waits(clock), [expected], 'the Retry-After wait, not backoff')
      })
    }
  }
})

test('Retry-After is not capped by backoffMaxMs', async (t) => {
  const upstream = await upstreamFor(t, script([503, { 'retry-after': '20' }]))
  const clock = new ManualClock()
  const client = manualClient(t, upstream.url, clock, { retry: { backoffInitialMs: 100, backoffMaxMs: 500, jitter: 'none' } })
  const pending = client.get('/x')
  await untilTimer(clock, 20_000)
  clock.advance(20_000)
  const res = await pending
  t.equal(res.statusCode, 200)
  t.same(waits(clock), [20_000])
})

test('a wait that would end past totalTimeout is not made: the call ends at once with its last failure', async (t) => {
  for (const status of [429, 503]) {
    t.test(`Retry-After past the deadline on ${status}`, async (t) => {
      const upstream = await upstreamFor(t, script([status, { 'retry-after': '6' }]))
      const clock = new ManualClock()
      const client = manualClient(t, upstream.url, clock, { timeout: 1_000, totalTimeout: 5_000 })
      const res = await client.get('/x')
      t.equal(res.statusCode, status)
      t.equal(res.attempts, 1)
      t.same(await res.json(), { error: status })
      t.equal(upstream.hits.length, 1)
      t.same(waits(clock), [1_000], 'only the attempt timeout was armed')
      t.equal(clock.now(), CLOCK_START, 'no time had to pass')
    })
  }
  t.test('an HTTP-date past the deadline', async (t) => {
    const upstream = await upstreamFor(t, script([503, { 'retry-after': new Date(CLOCK_START + 60_000).toUTCString() }]))
    const clock = new ManualClock()
    const client = manualClient(t, upstream.url, clock, { timeout: 1_000, totalTimeout: 5_000 })
    const res = await client.get('/x')
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
  })
  t.test('a backoff wait past the deadline', async (t) => {
    const upstream = await upstreamFor(t, script(500))
    const clock = new ManualClock()
    const client = manualClient(t, upstream.url, clock, { timeout: 1_000, totalTimeout: 3_000, retry: { backoffInitialMs: 3_000, jitter: 'none' } })
    const res = await client.get('/x')
    t.equal(res.statusCode, 500)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
  })
  t.test('a refused connection past the deadline rejects at once', async (t) => {
    const port = await refusedPort()
    const clock = new ManualClock()
    const client = manualClient(t, `http://127.0.0.1:${port}`, clock, { timeout: 1_000, totalTimeout: 3_000, retry: { backoffInitialMs: 3_000, jitter: 'none' } })
    const error = await client.get('/x').then(() => null, (error: unknown) => error)
    t.ok(error instanceof UpstreamError)
    t.equal((error as UpstreamError).attempts, 1)
  })
})

test('respectRetryAfter: false waits the backoff instead', async (t) => {
  const upstream = await upstreamFor(t, script([503, { 'retry-after': '5' }], [429, { 'retry-after': '5' }]))
  const clock = new ManualClock()
  const client = manualClient(t, upstream.url, clock, { retry: { backoffInitialMs: 100, jitter: 'none', respectRetryAfter: false } })
  const pending = client.get('/x')
  await untilTimer(clock, 100)
  clock.advance(100)
  await untilTimer(clock, 200)
  clock.advance(200)
  const res = await pending
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  t.same(waits(clock), [100, 200])
})

test('Retry-After on other statuses is not read', async (t) => {
  const upstream = await upstreamFor(t, script([500, { 'retry-after': '5' }], [502, { 'retry-after': '5' }]))
  const clock = new ManualClock()
  const client = manualClient(t, upstream.url, clock, { retry: { backoffInitialMs: 100, jitter: 'none' } })
  const pending = client.get('/x')
  await untilTimer(clock, 100)
  clock.advance(100)
  await untilTimer(clock, 200)
  clock.advance(200)
  t.equal((await pending).attempts, 3)
  t.same(waits(clock), [100, 200])
})

test('no retry with maxAttempts: 1 or retry: false', async (t) => {
  t.test('maxAttempts: 1', async (t) => {
    const upstream = await upstreamFor(t, script(503, 503))
    const client = svcClient(t, upstream.url, { retry: { ...QUICK, maxAttempts: 1 } })
    const res = await client.get('/x')
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
    t.equal(client.stats().retries, 0)
    t.equal(client.stats().failures, 1)
  })
  t.test('retry: false on the client', async (t) => {
    const upstream = await upstreamFor(t, script(503, 503))
    const client = svcClient(t, upstream.url, { retry: false })
    const res = await client.get('/x')
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
  })
  t.test('retry: false on the call', async (t) => {
    const upstream = await upstreamFor(t, script(503, 503))
    const client = svcClient(t, upstream.url, { retry: QUICK })
    const res = await client.get('/x', { retry: false })
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
  })
  t.test('retry: false on the client also stops transport retries', async (t) => {
    const port = await refusedPort()
    const client = svcClient(t, `http://127.0.0.1:${port}`, { retry: false })
    const error = await client.get('/x').then(() => null, (error: unknown) => error)
    t.ok(error instanceof UpstreamError)
    t.equal((error as UpstreamError).attempts, 1)
  })
})

test('a call overrides part of the retry settings', async (t) => {
  t.test('maxAttempts: 5 over a client with 2', async (t) => {
    const upstream = await upstreamFor(t, script(503, 503, 503, 503, 503, 503))
    const client = svcClient(t, upstream.url, { retry: { ...QUICK, maxAttempts: 2, budget: false } })
    const res = await client.get('/x', { retry: { maxAttempts: 5 } })
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 5)
    t.equal(upstream.hits.length, 5)
    const again = await client.get('/x')
    t.equal(again.attempts, 2, 'the client keeps its own setting')
  })
  t.test('retries on a client with retry: false', async (t) => {
    const upstream = await upstreamFor(t, script(503))
    const client = svcClient(t, upstream.url, { retry: false })
    const res = await client.get('/x', { retry: QUICK })
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 2)
  })
})

test('statusCodes decides which responses are retried', async (t) => {
  t.test('a 503 is not retried when only 500 is listed', async (t) => {
    const upstream = await upstreamFor(t, script(503))
    const client = svcClient(t, upstream.url, { retry: { ...QUICK, statusCodes: [500] } })
    const res = await client.get('/x')
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
  })
  t.test('a 500 is', async (t) => {
    const upstream = await upstreamFor(t, script(500, 500))
    const client = svcClient(t, upstream.url, { retry: { ...QUICK, statusCodes: [500] } })
    const res = await client.get('/x')
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 3)
    t.equal(upstream.hits.length, 3)
  })
  t.test('a listed 2xx is retried too', async (t) => {
    const upstream = await upstreamFor(t, script(202))
    const client = svcClient(t, upstream.url, { retry: { ...QUICK, statusCodes: [202] } })
    const res = await client.get('/x')
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 2)
  })
  t.test('a 404 is never retried by default', async (t) => {
    const upstream = await upstreamFor(t, script(404))
    const client = svcClient(t, upstream.url, { retry: QUICK })
    const res = await client.get('/x')
    t.equal(res.statusCode, 404)
    t.equal(res.attempts, 1)
    t.equal(client.stats().successes, 1, 'a non-5xx ending counts as a success')
  })
})

test('retried bodies are drained: 200 calls over one connection all complete', async (t) => {
  const seen = new Set<string>()
  const upstream = await upstreamFor(t, (_req, res, hit) => {
    if (seen.has(hit.url)) return sendJson(res, 200, { url: hit.url })
    seen.add(hit.url)
    const body = 'unavailable, '.repeat(200)
    res.writeHead(503, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  const client = svcClient(t, upstream.url, {
    timeout: 30_000,
    totalTimeout: 60_000,
    pool: { connections: 1 },
    retry: { ...QUICK, budget: false }
  })
  const calls = Array.from({ length: 200 }, (_, i) => client.get(`/item/${i}`))
  const responses = await Promise.all(calls)
  t.equal(responses.filter((res) => res.statusCode === 200).length, 200)
  t.equal(responses.filter((res) => res.attempts === 2).length, 200)
  const bodies = await Promise.all(responses.map((res) => res.json<{ url: string }>()))
  t.same(bodies.map((body) => body.url), Array.from({ length: 200 }, (_, i) => `/item/${i}`))
  t.equal(upstream.hits.length, 400)
  t.equal(client.stats().retries, 200)
  // A given dispatcher keeps its own connection limit: the client's `pool` options are not its.
  if (!usesGivenDispatcher()) t.ok((client.stats().pool?.connected ?? 0) <= 1, 'one connection at most')
})

test("the caller's abort during a wait rejects at once with the signal's reason", async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 503, { error: 'down' }))
  const clock = new ManualClock()
  const client = manualClient(t, upstream.url, clock, { retry: { maxAttempts: 5, backoffInitialMs: 1_000, jitter: 'none' } })
  const controller = new AbortController()
  const outcome = client.get('/x', { signal: controller.signal }).then(() => null, (error: unknown) => error)
  await untilTimer(clock, 1_000)
  const reason = new Error('caller gave up')
  controller.abort(reason)
  t.equal(await outcome, reason, 'the very reason, without the clock moving')
  t.equal(clock.pending().includes(1_000), false, 'the wait was cleared')
  clock.advance(60_000)
  await sleep(50)
  t.equal(upstream.hits.length, 1, 'no further attempt')
  t.equal(client.stats().inFlight, 0)
  t.equal(client.stats().retries, 0)
})
