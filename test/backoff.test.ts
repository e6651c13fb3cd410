import { test, type Test } from 'tap'
import { backoffDelay, retryAfterDelay } from '../lib/pipeline/backoff'
import { DEFAULT_RETRY, type ResolvedRetry } from '../lib/options/resolve'
import { CLOCK_START, ManualClock, clockedClient, untilTimer } from './helpers/manual-clock'
import { sendJson, startUpstream } from './helpers/upstream'

const ATTEMPT_TIMEOUT = 50_000

function retrySettings (overrides: Partial<ResolvedRetry>): ResolvedRetry {
  return { ...DEFAULT_RETRY, ...overrides }
}

test('backoffDelay without jitter doubles from backoffInitialMs up to backoffMaxMs', async (t) => {
  const retry = retrySettings({ jitter: 'none', backoffInitialMs: 200, backoffMaxMs: 3_000 })
  const never = (): number => { throw new Error('no jitter asked for, no random drawn') }
  const waits = [1, 2, 3, 4, 5, 6, 10, 60].map((n) => backoffDelay(n, retry, never))
  t.same(waits, [200, 400, 800, 1_600, 3_000, 3_000, 3_000, 3_000])
})

test('backoffDelay with full jitter is floor(random x the exponential value)', async (t) => {
  const retry = retrySettings({ jitter: 'full', backoffInitialMs: 200, backoffMaxMs: 1_000 })
  t.same([1, 2, 3, 4].map((n) => backoffDelay(n, retry, () => 0.5)), [100, 200, 400, 500])
  t.same([1, 2, 3].map((n) => backoffDelay(n, retry, () => 0.999)), [199, 399, 799])
  t.equal(backoffDelay(3, retry, () => 0), 0)
  t.equal(backoffDelay(1, retrySettings({ jitter: 'full', backoffInitialMs: 333, backoffMaxMs: 1_000 }), () => 0.5), 166)
})

test('retryAfterDelay reads delta-seconds and HTTP-dates relative to now', async (t) => {
  const now = CLOCK_START
  t.equal(retryAfterDelay('1', now), 1_000)
  t.equal(retryAfterDelay('0', now), 0)
  t.equal(retryAfterDelay(' 120 ', now), 120_000)
  t.equal(retryAfterDelay(['7', '9'], now), 7_000)
  t.equal(retryAfterDelay(new Date(now + 5_000).toUTCString(), now), 5_000)
  t.equal(retryAfterDelay(new Date(now + 90_000).toUTCString(), now + 1_000), 89_000)
  t.equal(retryAfterDelay(new Date(now - 60_000).toUTCString(), now), 0, 'a date in the past: no wait')
  t.equal(retryAfterDelay(undefined, now), undefined)
  t.equal(retryAfterDelay('soon', now), undefined)
  t.equal(retryAfterDelay('-5', now), undefined)
  t.equal(retryAfterDelay('1.5', now), undefined)
  t.equal(retryAfterDelay('2030-01-01', now), undefined, 'not an HTTP-date form')
  t.equal(retryAfterDelay('Tuesday, 14-Nov-23 22:13:30 GMT', now), 10_000, 'the obsolete RFC 850 form')
})

async function waitsOf (t: Test, jitter: 'none' | 'full', random: () => number): Promise<number[]> {
  let seen = 0
  const upstream = await startUpstream((_req, res) => {
    seen++
    if (seen <= 2) sendJson(res, 503, { error: 'unavailable' })
    else sendJson(res, 200, { ok: true })
  })
  const clock = new ManualClock()
  const client = clockedClient({
    baseUrl: upstream.url,
    timeout: ATTEMPT_TIMEOUT,
    totalTimeout: 100_000,
    retry: { maxAttempts: 3, backoffInitialMs: 200, backoffMaxMs: 10_000, jitter }
  }, clock, random)
  t.teardown(async () => {
    await upstream.close()
    await client.close()
  })

  const pending = client.get('/flaky')
  const first = backoffDelay(1, retrySettings({ jitter, backoffInitialMs: 200 }), random)
  const second = backoffDelay(2, retrySettings({ jitter, backoffInitialMs: 200 }), random)
  await untilTimer(clock, first)
  t.equal(upstream.hits.length, 1, 'the second attempt waits for the clock')
  clock.advance(first)
  await untilTimer(clock, second)
  t.equal(upstream.hits.length, 2)
  clock.advance(second)
  const res = await pending
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  t.same(await res.json(), { ok: true })
  t.equal(upstream.hits.length, 3)
  return clock.requested.filter((ms) => ms !== ATTEMPT_TIMEOUT)
}

test('through the client, the waits asked of the clock are exactly the backoff values', async (t) => {
  t.test('no jitter: 200 then 400', async (t) => {
    t.same(await waitsOf(t, 'none', Math.random), [200, 400])
  })
  t.test('full jitter with random 0.5: 100 then 200', async (t) => {
    t.same(await waitsOf(t, 'full', () => 0.5), [100, 200])
  })
  t.test('full jitter with random 0.25: 50 then 100', async (t) => {
    t.same(await waitsOf(t, 'full', () => 0.25), [50, 100])
  })
})

test('a Retry-After date that does not parse sets no wait', async (t) => {
  t.equal(retryAfterDelay('Mon, 99 Foo 2024 99:99:99 GMT', 0), undefined)
})
