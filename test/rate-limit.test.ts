import Fastify from 'fastify'
import { Writable } from 'node:stream'
import { test, type Test } from 'tap'
import resilientHttp, { requestIdGenerator } from '../plugin'
import './helpers/fastify-types'
import { ClientClosedError, RateLimitedError } from '../lib/errors'
import { CHANNELS, type RateLimitedEvent, type RateLimitPausedEvent, type RetrySkippedEvent } from '../lib/telemetry/events'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import { RetryBudget } from '../lib/policies/retry-budget'
import { CLOCK_START, type ClockedClientOptions, ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { type Step, timedUpstream, type TimedUpstream } from './helpers/timed-upstream'
import { rejection } from './helpers/upstream'
import { published } from './helpers/wait'

function clocked (t: Test, upstream: TimedUpstream, clock: ManualClock, options: Partial<ClockedClientOptions> = {}): HttpClient {
  const client = clockedClient({
    name: 'quotes',
    baseUrl: upstream.url,
    timeout: 100_000,
    totalTimeout: 1_000_000,
    retry: { maxAttempts: 3, backoffInitialMs: 100, jitter: 'none', budget: false },
    rateLimit: { perSecond: 10, burst: 3 },
    ...options
  }, clock)
  t.teardown(() => client.close())
  return client
}

async function rateLimited (promise: Promise<unknown>): Promise<RateLimitedError> {
  const error = await rejection(promise)
  if (!(error instanceof RateLimitedError)) throw new Error(`expected a RateLimitedError, got ${String(error)}`)
  return error
}

const ok = (): Step => ({ body: 'ok' })

/** The clock's pending timers, less the attempt timeouts' (100 s in these tests). */
function limiterTimers (clock: ManualClock): number[] {
  return clock.pending().filter((ms) => ms !== 100_000)
}

test('a full bucket lets a burst go, then one attempt per 1/perSecond; no wait allowed: refused at once with the time to the next token', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const refusals = published<RateLimitedEvent>(t, CHANNELS.rateLimited)
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 10, burst: 3, maxWaitMs: 0 } })

  const burst = await Promise.all([client.get('/1'), client.get('/2'), client.get('/3')])
  t.same(burst.map((res) => res.statusCode), [200, 200, 200], 'the burst goes at once')
  const refused = await rateLimited(client.get('/4'))
  t.equal(refused.retryAfterMs, 100, 'a token every 100 ms')
  t.equal(refused.code, 'FRH_RATE_LIMITED')
  t.equal(refused.statusCode, 503)
  t.equal(refused.attempts, 0)
  t.match(refused.message, /quotes: GET \/4 refused: rate limited, next token in 100 ms/)
  clock.advance(40)
  t.equal((await rateLimited(client.get('/5'))).retryAfterMs, 60)
  clock.advance(60)
  t.equal((await client.get('/6')).statusCode, 200, 'the token accrued')
  t.equal(upstream.hits.length, 4, 'nothing refused was sent')
  t.same(refusals, [
    { client: 'quotes', method: 'GET', path: '/4', retryAfterMs: 100 },
    { client: 'quotes', method: 'GET', path: '/5', retryAfterMs: 60 }
  ])
  const stats = client.stats()
  t.equal(stats.rateLimited, 2)
  t.equal(stats.rateLimitWaits, 0)
  t.equal(stats.circuit, 'closed')
  clock.advance(10_000)
  await Promise.all([client.get('/7'), client.get('/8'), client.get('/9')])
  await rateLimited(client.get('/10'))
  t.equal(upstream.hits.length, 7, 'a quiet spell fills the bucket to burst, no more')
})

test('calls wait for their turn in the order they came, within maxWaitMs; one whose turn is later is refused at once', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 10, burst: 1, maxWaitMs: 250 } })

  const calls = [client.get('/a'), client.get('/b'), client.get('/c')]
  const late = await rateLimited(client.get('/d'))
  t.equal(late.retryAfterMs, 300, 'the fourth in line would go at 300 ms')
  await until(() => upstream.hits.length === 1, 'the first call')
  t.same(limiterTimers(clock), [100], 'one timer for the whole line')
  clock.advance(100)
  await until(() => upstream.hits.length === 2, 'the second call')
  clock.advance(99)
  await new Promise((resolve) => setTimeout(resolve, 30))
  t.equal(upstream.hits.length, 2, 'not a millisecond early')
  clock.advance(1)
  await until(() => upstream.hits.length === 3, 'the third call')
  t.same(upstream.hits.map((hit) => hit.url), ['/a', '/b', '/c'], 'in order')
  t.same((await Promise.all(calls)).map((res) => res.statusCode), [200, 200, 200])
  t.equal(client.stats().rateLimitWaits, 2)
  t.equal(client.stats().rateLimited, 1)
  t.same(limiterTimers(clock), [], 'no timer left')
})

test('a call whose turn comes after its totalTimeout is refused at once', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { timeout: 100, totalTimeout: 150, rateLimit: { perSecond: 5, burst: 1 } })
  await client.get('/a')
  const refused = await rateLimited(client.get('/b'))
  t.equal(refused.retryAfterMs, 200, 'the next token comes after the call would have ended')
  t.equal(upstream.hits.length, 1)
})

test('the caller\'s abort takes a call out of line; those behind it move up', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 10, burst: 1 } })
  await client.get('/a')
  const controller = new AbortController()
  const aborted = client.get('/b', { signal: controller.signal })
  const next = client.get('/c')
  controller.abort(new Error('caller gave up'))
  t.match(await rejection(aborted), { message: 'caller gave up' })
  clock.advance(100)
  t.equal((await next).statusCode, 200, 'the next in line took the freed turn')
  t.same(upstream.hits.map((hit) => hit.url), ['/a', '/c'])
  t.same(limiterTimers(clock), [])
})

test('close cuts the waits with ClientClosedError and leaves no timer', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 2, burst: 1 } })
  await client.get('/a')
  const waiting = [rejection(client.get('/b')), rejection(client.get('/b'))]
  await client.close()
  for (const call of waiting) t.ok(await call instanceof ClientClosedError)
  t.same(limiterTimers(clock), [], 'no timer left')
  t.equal(upstream.hits.length, 1)
})

test('a 429 with Retry-After pauses the limit instead of opening the circuit; the bucket starts empty when it ends', async (t) => {
  const upstream = await timedUpstream(t, (index) => index === 0 ? { status: 429, headers: { 'retry-after': '2' } } : { body: 'ok' })
  const clock = new ManualClock()
  const paused = published<RateLimitPausedEvent>(t, CHANNELS.rateLimitPaused)
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 10, burst: 5, maxWaitMs: 1_000 } })

  const first = client.get('/first')
  await until(() => paused.length === 1, 'the pause')
  t.same(paused, [{ client: 'quotes', pausedMs: 2_000, reason: 'retry-after' }])
  t.equal(client.stats().circuit, 'closed', 'the circuit stays closed')
  const refused = await rateLimited(client.get('/during'))
  t.equal(refused.retryAfterMs, 2_100, 'paused 2 s, then the bucket starts empty')
  clock.advance(1_500)
  const waiter = client.get('/waiter')
  clock.advance(500)
  // The retry's wait ended at the pause's end: it joins the line behind the waiter.
  clock.advance(100)
  await until(() => upstream.hits.length === 2, 'the first after the pause')
  clock.advance(100)
  t.equal((await waiter).statusCode, 200)
  t.equal((await first).statusCode, 200)
  t.same(upstream.hits.map((hit) => hit.url), ['/first', '/waiter', '/first'], 'in the order they came, one per 100 ms after the pause')
  t.equal(upstream.hits.length, 3)
})

test('RateLimit and X-RateLimit headers pause the limit; respectRetryAfter: false does not', async (t) => {
  const wall = CLOCK_START
  const cases: Array<[string, Record<string, string>, number, string]> = [
    ['draft RateLimit', { ratelimit: '"default";r=0;t=3, "daily";r=5;t=9' }, 3_000, 'ratelimit'],
    ['X-RateLimit delta seconds', { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '4' }, 4_000, 'x-ratelimit'],
    ['X-RateLimit epoch seconds', { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(wall / 1000 + 5) }, 5_000, 'x-ratelimit']
  ]
  for (const [name, headers, ms, reason] of cases) {
    const upstream = await timedUpstream(t, () => ({ headers }))
    const clock = new ManualClock()
    const paused = published<RateLimitPausedEvent>(t, CHANNELS.rateLimitPaused)
    const client = clocked(t, upstream, clock, { name, rateLimit: { perSecond: 10, maxWaitMs: 0 } })
    t.equal((await client.get('/a')).statusCode, 200, `${name}: the answer itself is a success`)
    t.same(paused, [{ client: name, pausedMs: ms, reason }], name)
    t.equal((await rateLimited(client.get('/b'))).retryAfterMs, ms + 100, name)
  }
  const remaining = await timedUpstream(t, () => ({ headers: { ratelimit: '"default";r=3;t=3', 'x-ratelimit-remaining': '2', 'x-ratelimit-reset': '4' } }))
  const plain = clocked(t, remaining, new ManualClock(), { rateLimit: { perSecond: 10, maxWaitMs: 0 } })
  await plain.get('/a')
  t.equal((await plain.get('/b')).statusCode, 200, 'tokens remaining upstream: no pause')

  const distrust = await timedUpstream(t, () => ({ status: 429, headers: { 'retry-after': '2' } }))
  const clock = new ManualClock()
  const client = clocked(t, distrust, clock, { retry: { maxAttempts: 1, respectRetryAfter: false }, rateLimit: { perSecond: 10, maxWaitMs: 0 } })
  t.equal((await client.get('/a')).statusCode, 429)
  t.equal((await client.get('/b')).statusCode, 429, 'not paused: that caller chose not to trust the header')
})

test('a retry that gets no token in time is a retry not made: the call ends with its last failure, its budget given back', async (t) => {
  const upstream = await timedUpstream(t, () => ({ status: 503 }))
  const clock = new ManualClock()
  const skipped = published<RetrySkippedEvent>(t, CHANNELS.retrySkipped)
  const client = clocked(t, upstream, clock, {
    // Two retries in any 10 s.
    retry: { maxAttempts: 3, backoffInitialMs: 10, jitter: 'none', budget: { ratio: 0, minPerSecond: 0.2 } },
    rateLimit: { perSecond: 1, burst: 2, maxWaitMs: 0 }
  })
  // Each wait is advanced only once it is set: the 503 must have reached the client first.
  const first = client.get('/a')
  await untilTimer(clock, 10)
  clock.advance(10)
  await until(() => upstream.hits.length === 2, 'one retry, on the second token')
  await untilTimer(clock, 20)
  clock.advance(20)
  const res = await first
  t.equal(res.statusCode, 503, 'the last failure')
  t.equal(res.attempts, 2)
  t.same(skipped.map((event) => event.skipped), ['rate-limited'])
  t.equal(client.stats().rateLimited, 0, 'the call was not refused: it ended with its answer')
  t.equal(client.stats().retries, 1)

  clock.advance(2_000)
  const second = client.get('/b')
  await untilTimer(clock, 10)
  clock.advance(10)
  await until(() => upstream.hits.length === 4, 'its retry, on the budget given back')
  t.equal((await second).attempts, 2)
  t.same(skipped.map((event) => event.skipped), ['rate-limited', 'budget'], 'then the budget is spent: without the refund it was already')
})

test('a half-open probe that gets no token gives its slot back', async (t) => {
  let healthy = false
  const upstream = await timedUpstream(t, () => healthy ? { body: 'ok' } : { status: 500 })
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, {
    retry: false,
    circuitBreaker: { failureThreshold: 1, recoveryMs: 1_000 },
    rateLimit: { perSecond: 0.5, burst: 1, maxWaitMs: 0 }
  })
  t.equal((await client.get('/a')).statusCode, 500)
  t.equal(client.stats().circuit, 'open')
  clock.advance(1_000)
  t.equal((await rateLimited(client.get('/b'))).retryAfterMs, 1_000)
  t.equal((await rateLimited(client.get('/c'))).retryAfterMs, 1_000, 'not CircuitOpenError: the probe slot is free')
  t.equal(client.stats().circuit, 'half-open')
  clock.advance(1_000)
  healthy = true
  t.equal((await client.get('/d')).statusCode, 200)
  t.equal(client.stats().circuit, 'closed')
  t.equal(upstream.hits.length, 2)
})

test('a hedge never waits for a token: without one it is not sent', async (t) => {
  for (const burst of [1, 2]) {
    const upstream = await timedUpstream(t, (index) => index === 0 ? { delayMs: 300 } : { body: 'ok' })
    const client = createHttpClient({ name: 'quotes', baseUrl: upstream.url, hedge: { delayMs: 20 }, rateLimit: { perSecond: 1, burst } })
    t.teardown(() => client.close())
    const res = await client.get('/slow')
    t.equal(client.stats().hedges, burst - 1, burst === 1 ? 'no token, no hedge' : 'a token, a hedge')
    t.equal(res.attempts, burst)
  }
})

test('a call cut from the middle of the line leaves the others\' turns as they were', async (t) => {
  const upstream = await timedUpstream(t, ok)
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { rateLimit: { perSecond: 10, burst: 1 } })
  await client.get('/a')
  const controller = new AbortController()
  const b = client.get('/b')
  const c = rejection(client.get('/c', { signal: controller.signal }))
  const d = client.get('/d')
  controller.abort(new Error('gone'))
  t.match(await c, { message: 'gone' })
  t.same(limiterTimers(clock), [100], 'the head\'s timer stays')
  clock.advance(100)
  await b
  clock.advance(100)
  await d
  t.same(upstream.hits.map((hit) => hit.url), ['/a', '/b', '/d'])
})

test('unreadable rate-limit headers pause nothing', async (t) => {
  const headers: Array<Record<string, string>> = [
    { ratelimit: '"default";r=0;t=soon' },
    { ratelimit: '"default";r=0' },
    { ratelimit: '"default";t=5;x' },
    { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': 'later' },
    { 'x-ratelimit-remaining': '0' },
    { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(CLOCK_START / 1000 - 5) }
  ]
  for (const [i, header] of headers.entries()) {
    const upstream = await timedUpstream(t, () => ({ headers: header }))
    const client = clocked(t, upstream, new ManualClock(), { name: `c${i}`, rateLimit: { perSecond: 10, maxWaitMs: 0 } })
    await client.get('/a')
    t.equal((await client.get('/b')).statusCode, 200, JSON.stringify(header))
  }
  const upstream = await timedUpstream(t, () => ({ status: 429, headers: { 'retry-after': 'whenever' } }))
  const client = clocked(t, upstream, new ManualClock(), { retry: false, rateLimit: { perSecond: 10, maxWaitMs: 0 } })
  await client.get('/a')
  t.equal((await client.get('/b')).statusCode, 429, 'a 429 without a valid Retry-After pauses nothing')
})

test('a retry not made gives its budget back, in the second it was taken and only within the window', async (t) => {
  const budget = new RetryBudget(0, 0.1)
  t.ok(budget.tryAcquire(500))
  t.notOk(budget.tryAcquire(600), 'one retry in 10 s')
  budget.refund(500, 1_500)
  t.ok(budget.tryAcquire(1_600), 'given back')
  budget.refund(1_600, 20_000)
  budget.refund(20_000, 20_000)
  t.ok(budget.tryAcquire(20_100), 'a refund from outside the window changes nothing; none below zero')
})

test('a refusal and a pause are logged through the request\'s logger, with its reqId and the client\'s name once', async (t) => {
  const upstream = await timedUpstream(t, () => ({ status: 429, headers: { 'retry-after': '5' } }))
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const raw of chunk.toString().split('\n')) if (raw !== '') lines.push(JSON.parse(raw) as Record<string, unknown>)
      callback()
    }
  })
  const app = Fastify({ logger: { stream }, genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { quotes: { baseUrl: upstream.url, retry: false, rateLimit: { perSecond: 10, maxWaitMs: 0 } } } })
  app.get('/r', async () => {
    const first = await app.httpClients.quotes.get('/x')
    const second = await rejection(app.httpClients.quotes.get('/y'))
    return { first: first.statusCode, second: (second as RateLimitedError).code }
  })
  const reply = await app.inject({ url: '/r', headers: { 'x-request-id': 'rl-req-1' } })
  t.same(reply.json(), { first: 429, second: 'FRH_RATE_LIMITED' })
  const pause = lines.find((line) => String(line.msg).startsWith('rate limit paused for 5000 ms'))
  const refusal = lines.find((line) => String(line.msg).includes('refused by the rate limit'))
  t.match(pause, { reqId: 'rl-req-1', client: 'quotes', level: 40, reason: 'retry-after' })
  t.match(refusal, { reqId: 'rl-req-1', client: 'quotes', path: '/y', retryAfterMs: Number })
  t.ok((refusal?.retryAfterMs as number) > 4_000, 'the pause, then a token')
})
