import { test, type Test } from 'tap'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import { RetryBudget } from '../lib/policies/retry-budget'
import type { ClientOptions } from '../lib/types'
import { ManualClock, clockedClient, until } from './helpers/manual-clock'
import { sendJson, startUpstream, type Upstream } from './helpers/upstream'

/** Timeouts that only a hung call reaches, so a busy machine cannot fail these tests. */
const PATIENT = { timeout: 60_000, totalTimeout: 120_000 }

const T0 = 1_700_000_000_000

/** How many of `tries` acquisitions the budget grants at `now`. */
function acquire (budget: RetryBudget, now: number, tries: number): number {
  let granted = 0
  for (let i = 0; i < tries; i++) if (budget.tryAcquire(now)) granted++
  return granted
}

function record (budget: RetryBudget, now: number, calls: number): void {
  for (let i = 0; i < calls; i++) budget.recordCall(now)
}

test('with no calls, minPerSecond x 10 retries are allowed', async (t) => {
  t.equal(acquire(new RetryBudget(0.2, 1), T0, 50), 10)
  t.equal(acquire(new RetryBudget(0.2, 10), T0, 500), 100, 'the default floor')
  t.equal(acquire(new RetryBudget(0.5, 0), T0, 5), 0, 'no floor, no calls: no retry')
  t.equal(acquire(new RetryBudget(0.2, 0.5), T0, 50), 5, 'a fractional floor')
})

test('ratio x calls of the window, plus the floor', async (t) => {
  const budget = new RetryBudget(0.2, 1)
  record(budget, T0, 100)
  t.equal(acquire(budget, T0, 100), 30, '0.2 x 100 + 10')
  record(budget, T0 + 500, 5)
  t.equal(acquire(budget, T0 + 500, 100), 1, '0.2 x 105 + 10 = 31')
  record(budget, T0 + 999, 4)
  t.equal(acquire(budget, T0 + 999, 100), 1, '0.2 x 109 + 10 = 31.8: 31 used, one more starts below it')
  record(budget, T0 + 999, 1)
  t.equal(acquire(budget, T0 + 999, 100), 0, '0.2 x 110 + 10 = 32, 32 used')
  record(budget, T0 + 999, 5)
  t.equal(acquire(budget, T0 + 999, 100), 1, '0.2 x 115 + 10 = 33')

  const half = new RetryBudget(0.5, 0)
  record(half, T0, 7)
  t.equal(acquire(half, T0, 10), 4, '0.5 x 7 = 3.5: four retries start below it')
})

test('the window slides: calls and retries older than 10 seconds no longer count', async (t) => {
  const budget = new RetryBudget(0.2, 1)
  record(budget, T0, 50)
  record(budget, T0 + 5_000, 50)
  t.equal(acquire(budget, T0 + 5_000, 100), 30, '0.2 x 100 + 10')
  t.equal(acquire(budget, T0 + 9_999, 100), 0, 'still the same 10 s')

  // Second 10: the calls of second 0 leave the window, the retries of second 5 stay.
  t.equal(acquire(budget, T0 + 10_000, 100), 0, '30 retries >= 0.2 x 50 + 10')
  record(budget, T0 + 10_000, 100)
  t.equal(acquire(budget, T0 + 10_000, 100), 10, '0.2 x 150 + 10 = 40, 30 used')

  // Second 15: second 5 (50 calls, 30 retries) leaves; second 10 (100 calls, 10 retries) stays.
  t.equal(acquire(budget, T0 + 15_000, 100), 20, '0.2 x 100 + 10 = 30, 10 used')
})

test('a pause of 10 seconds or more empties the window, as does a clock going back', async (t) => {
  const budget = new RetryBudget(0.2, 1)
  record(budget, T0, 1_000)
  t.equal(acquire(budget, T0, 1_000), 210)
  t.equal(acquire(budget, T0 + 60_000, 100), 10, 'only the floor after a minute of quiet')
  t.equal(acquire(budget, T0 + 60_000, 100), 0)
  t.equal(acquire(budget, T0 + 30_000, 100), 10, 'time went back: start again')
})

async function outage (t: Test): Promise<Upstream> {
  const upstream = await startUpstream((_req, res) => sendJson(res, 503, { error: 'down' }))
  t.teardown(() => upstream.close())
  return upstream
}

function outageClient (t: Test, upstream: Upstream, retry: ClientOptions['retry']): HttpClient {
  const client = createHttpClient({ name: 'svc', baseUrl: upstream.url, circuitBreaker: false, retry, ...PATIENT })
  t.teardown(() => client.close())
  return client
}

const N = 100

test('during an outage the budget keeps the load near the call rate', async (t) => {
  const upstream = await outage(t)
  // A manual clock keeps the whole outage inside one second of the budget's window.
  const clock = new ManualClock(T0)
  const client = clockedClient({
    baseUrl: upstream.url,
    circuitBreaker: false,
    timeout: 50_000,
    totalTimeout: 100_000,
    retry: { backoffInitialMs: 1, backoffMaxMs: 2, jitter: 'none', budget: { ratio: 0.2, minPerSecond: 1 } }
  }, clock)
  t.teardown(() => client.close())
  let settled = 0
  const calls = Array.from({ length: N }, (_, i) => client.get(`/item/${i}`).finally(() => { settled++ }))
  const waiting = (): boolean => clock.hasPending(1) || clock.hasPending(2)
  for (let round = 0; ; round++) {
    if (settled === N) break
    if (round > N * 3) throw new Error('the calls never ended')
    await until(() => settled === N || waiting(), 'every call to end or wait')
    if (waiting()) clock.advance(2)
  }
  const responses = await Promise.all(calls)
  t.ok(responses.every((res) => res.statusCode === 503), 'every call resolves with its 503')
  t.ok(upstream.hits.length <= N * 1.2 + 10, `${upstream.hits.length} hits <= ${N * 1.2 + 10}`)
  const stats = client.stats()
  t.ok(stats.retriesDenied > 0, 'retries were denied')
  // All 100 calls are counted before the first 503 comes back: 0.2 x 100 + 10 retries.
  t.equal(stats.retries, 30)
  t.equal(upstream.hits.length, N + 30)
  const cutShort = responses.filter((res) => res.attempts < 3).length
  t.ok(cutShort >= N - 30, 'most calls were denied their retries')
  t.equal(stats.retriesDenied, cutShort, 'each call that ended early was denied once')
  t.equal(stats.failures, N)
  t.ok(clock.now() - T0 < 1_000, 'within one second of the budget')
})

test('sequential calls in an outage: retries track 20 % of the calls plus the floor', async (t) => {
  const upstream = await outage(t)
  const clock = new ManualClock(T0)
  const client = clockedClient({ baseUrl: upstream.url, circuitBreaker: false, timeout: 50_000, totalTimeout: 100_000, retry: { maxAttempts: 2, backoffInitialMs: 10, jitter: 'none', budget: { ratio: 0.2, minPerSecond: 1 } } }, clock)
  t.teardown(() => client.close())
  const attempts: number[] = []
  for (let i = 0; i < 60; i++) {
    let done = false
    const pending = client.get('/x').finally(() => { done = true })
    await until(() => done || clock.hasPending(10), `call ${i + 1} to end or wait`)
    if (!done) clock.advance(10)
    attempts.push((await pending).attempts)
  }
  const retried = attempts.filter((n) => n === 2).length
  // The i-th call (from 1) may retry while retries < 0.2 x i + 10: the floor's
  // 10 at first, then about one more for every 5 calls.
  t.equal(retried, 22, 'the limit after the 60th call: 0.2 x 60 + 10')
  t.same(attempts.slice(0, 14), [...Array(13).fill(2), 1], 'the 13th retries (12 < 12.6), the 14th does not (13 >= 12.8)')
  t.equal(client.stats().retries, retried)
  t.equal(client.stats().retriesDenied, 60 - retried)
  t.ok(clock.now() - T0 < 1_000, 'all within one second of the manual clock')
})

test('budget: false lets every call use all its attempts', async (t) => {
  const upstream = await outage(t)
  const client = outageClient(t, upstream, { backoffInitialMs: 1, backoffMaxMs: 2, jitter: 'none', budget: false })
  const responses = await Promise.all(Array.from({ length: N }, (_, i) => client.get(`/item/${i}`)))
  t.ok(responses.every((res) => res.statusCode === 503 && res.attempts === 3))
  t.equal(upstream.hits.length, N * 3)
  t.equal(client.stats().retries, N * 2)
  t.equal(client.stats().retriesDenied, 0)
})
