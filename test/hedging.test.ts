import diagnosticsChannel from 'node:diagnostics_channel'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import { test, type Test } from 'tap'
import { ClientClosedError, InvalidRequestError } from '../lib/errors'
import { CHANNELS, type HedgeEvent } from '../lib/telemetry/events'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import type { ClientOptions } from '../lib/types'
import { until } from './helpers/manual-clock'
import { poolIdle, type Step, timedUpstream, type TimedUpstream, watchUnhandledRejections } from './helpers/timed-upstream'
import { rejection } from './helpers/upstream'

const STALL = 500

interface LogLine { level: number, msg: string, [key: string]: unknown }

function capturingLogger (): { logger: pino.Logger, lines: LogLine[] } {
  const lines: LogLine[] = []
  const logger = pino({ level: 'info' }, { write (line: string) { lines.push(JSON.parse(line) as LogLine) } })
  return { logger, lines }
}

function hedgeEvents (t: Test): HedgeEvent[] {
  const events: HedgeEvent[] = []
  const listener = (message: unknown): void => { events.push(message as HedgeEvent) }
  diagnosticsChannel.subscribe(CHANNELS.hedge, listener)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.hedge, listener))
  return events
}

function hedgedClient (t: Test, upstream: TimedUpstream, options: ClientOptions = {}, logger?: pino.Logger): HttpClient {
  const client = createHttpClient({
    name: 'catalog',
    baseUrl: upstream.url,
    hedge: { delayMs: 50 },
    retry: false,
    circuitBreaker: false,
    logger,
    ...options
  })
  t.teardown(() => client.close())
  return client
}

/** The first request of each pair stalls, the second answers at once. */
const slowThenFast = (index: number): Step => index % 2 === 0
  ? { delayMs: STALL, body: 'slow' }
  : { body: 'fast' }

// Kept for the whole file: checked by the last test.
const unhandled = watchUnhandledRejections()

test('a slow attempt is hedged: the hedge answers, the slow one is cut', async (t) => {
  const upstream = await timedUpstream(t, slowThenFast)
  const { logger, lines } = capturingLogger()
  const events = hedgeEvents(t)
  const client = hedgedClient(t, upstream, {}, logger)

  const started = performance.now()
  const res = await client.get('/item')
  const elapsed = performance.now() - started
  t.equal(await res.text(), 'fast', 'the hedge answered')
  t.ok(elapsed < STALL - 100, `resolved well before the slow answer (${Math.round(elapsed)} ms)`)
  t.ok(elapsed >= 45, 'not before the hedge delay')
  t.equal(res.attempts, 2)
  await until(() => upstream.cuts() === 1, 'the slow request to be cut', 2_000)
  t.equal(upstream.hits.length, 2, 'exactly two requests')
  t.same(upstream.seen.map((seen) => seen.cut), [true, false], 'the slow one was cut, not the hedge')

  const stats = client.stats()
  t.equal(stats.hedges, 1)
  t.equal(stats.hedgeWins, 1)
  t.equal(stats.successes, 1)
  t.equal(stats.requests, 1)
  t.equal(stats.retries, 0)
  t.equal(events.length, 1)
  t.match(events[0], { client: 'catalog', method: 'GET', path: '/item', attempt: 2 })
  t.ok(events[0].delayMs >= 45 && events[0].delayMs < 400, `delayMs ${events[0].delayMs}`)
  const logged = lines.filter((line) => line.msg.startsWith('hedging'))
  t.equal(logged.length, 1, 'logged')
  t.match(logged[0], { level: 30, client: 'catalog', attempt: 2, msg: /^hedging GET \/item after \d+ ms without an answer \(attempt 2\)$/ })
  await poolIdle(client)
})

test('an answer before the delay sends no hedge', async (t) => {
  const upstream = await timedUpstream(t, () => ({ body: 'quick' }))
  const client = hedgedClient(t, upstream)
  const res = await client.get('/item')
  t.equal(await res.text(), 'quick')
  t.equal(res.attempts, 1)
  await sleep(100)
  t.equal(upstream.hits.length, 1)
  t.equal(client.stats().hedges, 0)
  await poolIdle(client)
})

test('the primary wins when it answers first: the hedge is cut and is no hedge win', async (t) => {
  // The primary stalls 150 ms; the hedge (sent at 50 ms) would take 500 ms.
  const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 150, body: 'primary' } : { delayMs: STALL, body: 'hedge' })
  const client = hedgedClient(t, upstream)
  const res = await client.get('/item')
  t.equal(await res.text(), 'primary')
  t.equal(res.attempts, 2)
  await until(() => upstream.cuts() === 1, 'the hedge to be cut', 2_000)
  t.same(upstream.seen.map((seen) => seen.cut), [false, true])
  t.equal(client.stats().hedges, 1)
  t.equal(client.stats().hedgeWins, 0)
  await poolIdle(client)
})

test('POST is never hedged; a per-call hedge on POST is refused', async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 200, body: 'posted' }))
  const client = hedgedClient(t, upstream)
  const error = await rejection(client.post('/orders', { hedge: { delayMs: 10 } }))
  t.type(error, InvalidRequestError)
  t.match((error as Error).message, /hedge/)
  t.equal(upstream.hits.length, 0, 'nothing sent')
  t.type(await rejection(client.request({ method: 'PATCH', path: '/orders', hedge: {} })), InvalidRequestError)

  const res = await client.post('/orders', { body: 'x' })
  t.equal(await res.text(), 'posted')
  t.equal(res.attempts, 1, 'the client-wide hedge does not apply to POST')
  t.equal(upstream.hits.length, 1)
  t.equal(client.stats().hedges, 0)
  await poolIdle(client)
})

test('a per-call hedge turns hedging on for one GET, and hedge: false off', async (t) => {
  const upstream = await timedUpstream(t, slowThenFast)
  const client = hedgedClient(t, upstream, { hedge: false })
  const res = await client.get('/item', { hedge: { delayMs: 30 } })
  t.equal(await res.text(), 'fast')
  t.equal(res.attempts, 2)
  await until(() => upstream.cuts() === 1, 'the slow request to be cut', 2_000)

  const hedged = hedgedClient(t, upstream)
  const unhedged = await hedged.get('/item', { hedge: false })
  t.equal(await unhedged.text(), 'slow', 'index 2 stalls and nothing else is sent')
  t.equal(upstream.hits.length, 3)
  await poolIdle(client)
  await poolIdle(hedged)
})

test('a spent retry budget sends no hedge', async (t) => {
  const upstream = await timedUpstream(t, slowThenFast)
  const client = hedgedClient(t, upstream, { retry: { maxAttempts: 3, budget: { ratio: 0, minPerSecond: 0 } } })
  const started = performance.now()
  const res = await client.get('/item')
  t.equal(await res.text(), 'slow', 'the call waited for the slow answer')
  t.ok(performance.now() - started >= STALL - 20)
  t.equal(res.attempts, 1)
  t.equal(upstream.hits.length, 1)
  t.equal(client.stats().hedges, 0)
  await poolIdle(client)
})

test('a hedge takes from the retry budget', async (t) => {
  // 10 calls in the window and ratio 0.1: one retry-or-hedge allowed, then none.
  const upstream = await timedUpstream(t, (index) => index === 0 || index === 2 ? { delayMs: 300, body: 'slow' } : { body: 'fast' })
  const client = hedgedClient(t, upstream, { retry: { maxAttempts: 3, budget: { ratio: 0.1, minPerSecond: 0 } } })
  const first = await client.get('/item')
  t.equal(await first.text(), 'fast')
  t.equal(first.attempts, 2, 'hedged: 0.1 x 1 call allows one')
  const second = await client.get('/item')
  t.equal(await second.text(), 'slow', 'no budget left for a second hedge')
  t.equal(second.attempts, 1)
  t.equal(client.stats().hedges, 1)
  await poolIdle(client)
})

test('no hedge while the circuit is half-open: the probe runs alone', async (t) => {
  const upstream = await timedUpstream(t, (index) => index === 0 ? { status: 500 } : index === 1 ? { delayMs: 300, body: 'probe' } : { body: 'fast' })
  const client = hedgedClient(t, upstream, { circuitBreaker: { failureThreshold: 1, recoveryMs: 150 } })
  t.equal((await client.get('/item')).statusCode, 500)
  t.equal(client.stats().circuit, 'open')
  await until(() => client.stats().circuit === 'half-open', 'the circuit to half-open', 2_000)
  const res = await client.get('/item')
  t.equal(await res.text(), 'probe')
  t.equal(res.attempts, 1)
  t.equal(upstream.hits.length, 2, 'no hedge beside the probe')
  t.equal(client.stats().hedges, 0)
  t.equal(client.stats().circuit, 'closed', 'the probe closed it')
  await poolIdle(client)
})

test('maxHedges: 2 sends up to three attempts', async (t) => {
  await t.test('the second hedge answers', async (t) => {
    const upstream = await timedUpstream(t, (index) => index < 2 ? { delayMs: STALL, body: 'slow' } : { body: 'third' })
    const events = hedgeEvents(t)
    const client = hedgedClient(t, upstream, { hedge: { delayMs: 50, maxHedges: 2 } })
    const started = performance.now()
    const res = await client.get('/item')
    const elapsed = performance.now() - started
    t.equal(await res.text(), 'third')
    t.ok(elapsed >= 90 && elapsed < STALL - 100, `after two delays (${Math.round(elapsed)} ms)`)
    t.equal(res.attempts, 3)
    t.same(events.map((event) => event.attempt), [2, 3])
    await until(() => upstream.cuts() === 2, 'both slow requests to be cut', 2_000)
    t.equal(upstream.hits.length, 3)
    t.equal(client.stats().hedges, 2)
    t.equal(client.stats().hedgeWins, 1)
    await poolIdle(client)
  })

  await t.test('and no more when all are slow', async (t) => {
    const upstream = await timedUpstream(t, () => ({ delayMs: 300, body: 'slow' }))
    const client = hedgedClient(t, upstream, { hedge: { delayMs: 30, maxHedges: 2 } })
    const res = await client.get('/item')
    t.equal(await res.text(), 'slow')
    t.equal(res.attempts, 3)
    await sleep(200)
    t.equal(upstream.hits.length, 3, 'three attempts in all')
    t.equal(client.stats().hedgeWins, 0, 'the primary answered first')
    await until(() => upstream.cuts() === 2, 'the two hedges to be cut', 2_000)
    await poolIdle(client)
  })
})

/**
 * The path of the measured call after a warm-up; only its first request is slow. Chosen by
 * path, not by index: a warm-up hedge written just before it was cut can still reach the
 * server after the warm-up, and would take the slow answer in its place.
 */
const FINAL = '/final'

/** A test's own check: is this request the first one to FINAL? */
function firstFinal (): (url: string) => boolean {
  let seen = 0
  return (url) => url === FINAL && seen++ === 0
}

test("'auto': no hedge before 100 samples, then only the slow tail is hedged", async (t) => {
  const isFirstFinal = firstFinal()
  // One answer in ten takes 60 ms, the rest 5 ms: the p95 sits in that slow tenth, far enough above
  // the fast answers that a busy machine's delays do not push them past it.
  const upstream = await timedUpstream(t, (index, _open, url) => isFirstFinal(url) ? { delayMs: STALL, body: 'slow' } : { delayMs: index % 10 === 9 ? 60 : 5, body: 'fast' })
  const client = hedgedClient(t, upstream, { hedge: { delayMs: 'auto' } })
  const batch = async (count: number): Promise<void> => {
    await Promise.all(Array.from({ length: count }, async () => { await (await client.get('/item')).text() }))
  }
  for (let i = 0; i < 10; i++) await batch(10)
  t.equal(client.stats().hedges, 0, 'none in the first 100 calls')
  t.equal(upstream.hits.length, 100)
  for (let i = 0; i < 5; i++) await batch(10)
  const tailHedges = client.stats().hedges
  // Only the slow tenth, and answers a busy machine delays past the p95, are hedged: well under half.
  t.ok(tailHedges <= 20, `few of the next 50 calls are hedged (${tailHedges})`)

  const started = performance.now()
  const res = await client.get(FINAL)
  const elapsed = performance.now() - started
  t.ok(elapsed < STALL - 100, `the hedge answered (${Math.round(elapsed)} ms)`)
  t.ok(elapsed >= 45, 'it was sent after the p95, among the 60 ms answers, not after the fast ones')
  t.equal(await res.text(), 'fast')
  t.equal(res.attempts, 2)
  t.equal(client.stats().hedges, tailHedges + 1)
  await poolIdle(client)
})

test("a per-call 'auto' hedge learns from the client's attempts when the client hedges otherwise", async (t) => {
  const isFirstFinal = firstFinal()
  const upstream = await timedUpstream(t, (_index, _open, url) => isFirstFinal(url) ? { delayMs: STALL, body: 'slow' } : { delayMs: 20, body: 'fast' })
  const client = hedgedClient(t, upstream, { hedge: false })
  for (let i = 0; i < 15; i++) {
    await Promise.all(Array.from({ length: 10 }, async () => { await (await client.get('/item', { hedge: {} })).text() }))
  }
  const hedgesBefore = client.stats().hedges
  const res = await client.get(FINAL, { hedge: { delayMs: 'auto' } })
  t.equal(await res.text(), 'fast', 'hedged after the p95')
  t.equal(res.attempts, 2)
  t.equal(client.stats().hedges, hedgesBefore + 1)
  await poolIdle(client)
})

test('close before the delay: no hedge is sent; the call finishes within the grace period', async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 200, body: 'slow' }))
  const client = hedgedClient(t, upstream, { hedge: { delayMs: 100 }, timeout: 2_000 })
  const pending = client.get('/item')
  await until(() => upstream.hits.length === 1, 'the first request', 2_000)
  const closed = client.close()
  const res = await pending
  t.equal(await res.text(), 'slow')
  t.equal(res.attempts, 1)
  await closed
  t.equal(upstream.hits.length, 1, 'no hedge after close began')
  t.equal(client.stats().hedges, 0)
})

test('close while hedged: no further hedge, and both attempts are cut after the grace period', async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 'hold' }))
  // The client's timeout (300 ms) is the grace period; this call's attempts may take longer.
  const client = hedgedClient(t, upstream, { hedge: { delayMs: 60, maxHedges: 2 }, timeout: 300 })
  const pending = rejection(client.get('/item', { timeout: 5_000, totalTimeout: 10_000 }))
  await until(() => upstream.hits.length === 2, 'the first hedge', 2_000)
  const started = performance.now()
  await client.close()
  const error = await pending
  t.type(error, ClientClosedError)
  t.ok(performance.now() - started < 2_000)
  await until(() => upstream.cuts() === 2, 'both requests to be cut', 2_000)
  t.equal(upstream.hits.length, 2, 'the second hedge was never sent')
  t.equal(upstream.open(), 0)
})

test("the caller's abort cuts every attempt", async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 'hold' }))
  const client = hedgedClient(t, upstream)
  const controller = new AbortController()
  const pending = rejection(client.get('/item', { signal: controller.signal }))
  await until(() => upstream.hits.length === 2, 'the hedge', 2_000)
  const reason = new Error('caller gave up')
  controller.abort(reason)
  t.equal(await pending, reason, 'rejects with the signal reason')
  await until(() => upstream.cuts() === 2, 'both requests to be cut', 2_000)
  t.equal(upstream.open(), 0)
  t.equal(client.stats().inFlight, 0)
  await poolIdle(client)
})

test('a transient failure of the hedge while the primary runs starts no retry: the primary answers', async (t) => {
  const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 300, body: 'primary' } : { status: 503, body: 'busy' })
  const client = hedgedClient(t, upstream, { retry: { maxAttempts: 3, backoffInitialMs: 10, jitter: 'none', budget: false } })
  const res = await client.get('/item')
  t.equal(res.statusCode, 200)
  t.equal(await res.text(), 'primary')
  t.equal(res.attempts, 2)
  await sleep(50)
  t.equal(upstream.hits.length, 2, 'no retry after the 503')
  const stats = client.stats()
  t.equal(stats.retries, 0)
  t.equal(stats.hedgeWins, 0)
  t.equal(stats.successes, 1)
  await poolIdle(client)
})

test('once no attempt is in flight, the retry rules apply; a hedge does not use up maxAttempts', async (t) => {
  // The primary and the hedge both fail with 503; the retry (index 2) answers.
  const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 200, status: 503 } : index === 1 ? { status: 503 } : { body: 'retried' })
  const client = hedgedClient(t, upstream, { retry: { maxAttempts: 2, backoffInitialMs: 10, jitter: 'none', budget: false } })
  const res = await client.get('/item')
  t.equal(await res.text(), 'retried')
  t.equal(res.attempts, 3, 'the primary, the hedge and one retry')
  t.equal(upstream.hits.length, 3)
  t.equal(client.stats().retries, 1)
  t.equal(client.stats().hedges, 1)
  await poolIdle(client)
})

test('a losing attempt counts neither way for the breaker', async (t) => {
  await t.test('a cut primary that would have failed does not open the circuit', async (t) => {
    const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 300, status: 503 } : { body: 'fast' })
    const client = hedgedClient(t, upstream, { circuitBreaker: { failureThreshold: 1, recoveryMs: 10_000 } })
    const res = await client.get('/item')
    t.equal(await res.text(), 'fast')
    await until(() => upstream.cuts() === 1, 'the primary to be cut', 2_000)
    await sleep(350)
    t.equal(client.stats().circuit, 'closed')
    t.equal((await client.get('/again')).statusCode, 200, 'calls go through')
    await poolIdle(client)
  })

  await t.test('a cut primary that would have timed out does not open it either', async (t) => {
    const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 'hold' } : { body: 'fast' })
    const client = hedgedClient(t, upstream, { circuitBreaker: { failureThreshold: 1, recoveryMs: 10_000 }, timeout: 200 })
    const res = await client.get('/item')
    t.equal(await res.text(), 'fast')
    await sleep(300)
    t.equal(client.stats().circuit, 'closed')
    t.equal(upstream.cuts(), 1)
    await poolIdle(client)
  })

  await t.test('and a losing hedge neither closes a failing count', async (t) => {
    // Threshold 2: a 500, then a call whose primary fails with 500 while its (slower) hedge is cut.
    const upstream = await timedUpstream(t, (index) => index === 0 ? { status: 500 } : index === 1 ? { delayMs: 100, status: 500 } : { delayMs: STALL, body: 'late' })
    const client = hedgedClient(t, upstream, { circuitBreaker: { failureThreshold: 2, recoveryMs: 10_000 } })
    t.equal((await client.get('/item')).statusCode, 500)
    t.equal((await client.get('/item')).statusCode, 500)
    t.equal(client.stats().circuit, 'open', 'the two 500s are consecutive: the hedge left no success between them')
    await until(() => upstream.cuts() === 1, 'the hedge to be cut', 2_000)
    await poolIdle(client)
  })
})

test('no unhandled rejection in this file', async (t) => {
  await sleep(20)
  t.same(unhandled, [])
})

test('a first try that fails before the hedge delay: its retry waits, and no hedge goes out for it meanwhile', async (t) => {
  const upstream = await timedUpstream(t, (index) => index === 0 ? { status: 503, body: 'busy' } : { body: 'fine' })
  const client = hedgedClient(t, upstream, { hedge: { delayMs: 100 }, retry: { backoffInitialMs: 300, jitter: 'none' } })
  const res = await client.get('/item')
  t.equal(await res.text(), 'fine')
  t.equal(res.attempts, 2, 'the first try and its retry')
  t.equal(client.stats().hedges, 0, 'no hedge during the wait')
  t.equal(client.stats().retries, 1)
  await poolIdle(client)
})
