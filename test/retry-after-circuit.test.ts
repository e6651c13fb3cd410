import { test, type Test } from 'tap'
import { CircuitOpenError } from '../lib/errors'
import { CHANNELS, type CircuitEvent, type RetrySkippedEvent } from '../lib/telemetry/events'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import { CLOCK_START, type ClockedClientOptions, ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { poolIdle, type Step, timedUpstream, type TimedUpstream } from './helpers/timed-upstream'
import { rejection } from './helpers/upstream'
import { published } from './helpers/wait'

const RECOVERY = 10_000

/** The first answer is `first`; every later one a 200. */
function firstThenOk (first: Step): (index: number) => Step {
  return (index) => index === 0 ? first : { body: 'ok' }
}

function clocked (t: Test, upstream: TimedUpstream, clock: ManualClock, options: Partial<ClockedClientOptions> = {}): HttpClient {
  const client = clockedClient({
    name: 'quotes',
    baseUrl: upstream.url,
    timeout: 100_000,
    totalTimeout: 1_000_000,
    retry: { maxAttempts: 3, backoffInitialMs: 100, jitter: 'none', budget: false },
    circuitBreaker: { failureThreshold: 5, recoveryMs: RECOVERY },
    ...options
  }, clock)
  t.teardown(() => client.close())
  return client
}

async function circuitOpenError (promise: Promise<unknown>): Promise<CircuitOpenError> {
  const error = await rejection(promise)
  if (!(error instanceof CircuitOpenError)) throw new Error(`expected a CircuitOpenError, got ${String(error)}`)
  return error
}

test('a 503 with Retry-After opens the circuit until then; its own retry is the probe that closes it', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '2' } }))
  const clock = new ManualClock()
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const client = clocked(t, upstream, clock)

  const first = client.get('/quote')
  await untilTimer(clock, 2_000)
  t.equal(client.stats().circuit, 'open', 'opened by one answer, well below the failure threshold')
  t.same(circuit, [{ client: 'quotes', from: 'closed', to: 'open', remainingMs: 2_000, cause: 'retry-after' }])

  const early = await circuitOpenError(client.get('/other'))
  t.equal(early.remainingMs, 2_000)
  t.equal(early.statusCode, 503)
  t.equal(early.openedBy, 'retry-after')
  clock.advance(1_500)
  const later = await circuitOpenError(client.get('/other'))
  t.equal(later.remainingMs, 500, 'the time left')
  t.equal(upstream.hits.length, 1, 'the upstream saw nothing while open')
  t.equal(client.stats().shortCircuited, 2)

  clock.advance(500)
  const res = await first
  t.equal(res.statusCode, 200, 'the retry went through when its wait ended')
  t.equal(res.attempts, 2)
  t.equal(upstream.hits.length, 2)
  t.equal(client.stats().circuit, 'closed')
  t.same(circuit.slice(1).map((event) => [event.to, event.cause]), [['half-open', 'recovery'], ['closed', 'probe']])
  t.equal((await client.get('/after')).statusCode, 200, 'calls flow again')
  await poolIdle(client)
})

test('a 429 with Retry-After as an HTTP-date opens it as well', async (t) => {
  const date = new Date(CLOCK_START + 3_000).toUTCString()
  const upstream = await timedUpstream(t, firstThenOk({ status: 429, headers: { 'retry-after': date } }))
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock)
  const first = client.get('/quote')
  await untilTimer(clock, 3_000)
  t.equal((await circuitOpenError(client.get('/other'))).remainingMs, 3_000)
  clock.advance(3_000)
  t.equal((await first).statusCode, 200)
  t.equal(client.stats().circuit, 'closed')
  await poolIdle(client)
})

test('when the probe is taken at that moment, the call ends with its last failure', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '2' } }))
  const clock = new ManualClock()
  const skipped = published<RetrySkippedEvent>(t, CHANNELS.retrySkipped)
  const client = clocked(t, upstream, clock)
  // Set before the call's wait, so it fires first when both fall due: another call takes the one probe.
  let other: Promise<unknown> | undefined
  clock.setTimer(() => { other = client.get('/other') }, 2_000)
  const first = client.get('/quote')
  await until(() => clock.pending().filter((ms) => ms === 2_000).length === 2, 'the call to wait 2 s beside our own timer')
  clock.advance(2_000)
  const res = await first
  t.equal(res.statusCode, 503, 'its last failure')
  t.equal(res.attempts, 1)
  t.match(skipped, [{ skipped: 'circuit', reason: 'status 503' }])
  t.equal(((await other) as { statusCode: number }).statusCode, 200, 'the other call was the probe')
  t.equal(upstream.hits.length, 2)
  t.equal(client.stats().circuit, 'closed')
  await poolIdle(client)
})

test('a Retry-After of a day opens the circuit for at most 10 x recoveryMs', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '86400' } }))
  const clock = new ManualClock()
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const client = clocked(t, upstream, clock, { circuitBreaker: { failureThreshold: 5, recoveryMs: 1_000 } })
  const res = await client.get('/quote')
  t.equal(res.statusCode, 503, 'a wait of a day is past the total timeout: the call ends at once')
  t.equal(res.attempts, 1)
  t.match(circuit, [{ to: 'open', remainingMs: 10_000, cause: 'retry-after' }])
  t.equal((await circuitOpenError(client.get('/other'))).remainingMs, 10_000)
  clock.advance(10_000)
  t.equal(client.stats().circuit, 'half-open')
  t.equal((await client.get('/other')).statusCode, 200)
  t.equal(client.stats().circuit, 'closed')
  await poolIdle(client)
})

test('a Retry-After HTTP-date in the past is ignored: nothing opens', async (t) => {
  const past = new Date(CLOCK_START - 60_000).toUTCString()
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': past } }))
  const clock = new ManualClock()
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const client = clocked(t, upstream, clock)
  const first = client.get('/quote')
  await untilTimer(clock, 0)
  t.equal(client.stats().circuit, 'closed')
  t.equal((await client.get('/other')).statusCode, 200, 'other calls go through')
  clock.advance(0)
  t.equal((await first).statusCode, 200)
  t.same(circuit, [])
  await poolIdle(client)
})

test('a 429 without Retry-After neither counts nor opens', async (t) => {
  await t.test('with a threshold of 1', async (t) => {
    const upstream = await timedUpstream(t, firstThenOk({ status: 429 }))
    const clock = new ManualClock()
    const client = clocked(t, upstream, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: RECOVERY } })
    const first = client.get('/quote')
    await untilTimer(clock, 100)
    t.equal(client.stats().circuit, 'closed')
    t.equal((await client.get('/other')).statusCode, 200)
    clock.advance(100)
    t.equal((await first).statusCode, 200)
    await poolIdle(client)
  })

  await t.test('and it ends a run of failures as any answer does', async (t) => {
    const statuses = [503, 429, 503]
    const upstream = await timedUpstream(t, (index) => ({ status: statuses[index] ?? 200 }))
    const clock = new ManualClock()
    const client = clocked(t, upstream, clock, { retry: false, circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY } })
    for (const status of statuses) t.equal((await client.get('/quote')).statusCode, status)
    t.equal(client.stats().circuit, 'closed', 'the 429 reset the count')
    await poolIdle(client)
  })
})

test('a call with respectRetryAfter: false neither waits for nor opens on Retry-After', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '2' } }))
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock)
  const first = client.get('/quote', { retry: { respectRetryAfter: false } })
  await untilTimer(clock, 100)
  t.notOk(clock.hasPending(2_000), 'its wait is the backoff')
  t.equal(client.stats().circuit, 'closed')
  t.equal((await client.get('/other')).statusCode, 200)
  clock.advance(100)
  t.equal((await first).statusCode, 200)
  await poolIdle(client)
})

test('openOnRetryAfter: false leaves the circuit closed; the call still waits as asked', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '2' } }))
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { circuitBreaker: { failureThreshold: 5, recoveryMs: RECOVERY, openOnRetryAfter: false } })
  const first = client.get('/quote')
  await untilTimer(clock, 2_000)
  t.equal(client.stats().circuit, 'closed')
  t.equal((await client.get('/other')).statusCode, 200)
  clock.advance(2_000)
  t.equal((await first).statusCode, 200)
  t.equal(client.stats().shortCircuited, 0)
  await poolIdle(client)
})

test('in real time: Retry-After: 1 fails other calls fast, then the retry closes the circuit', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '1' } }))
  const client = createHttpClient({
    name: 'quotes',
    baseUrl: upstream.url,
    retry: { maxAttempts: 2, budget: false },
    circuitBreaker: { failureThreshold: 5, recoveryMs: RECOVERY }
  })
  t.teardown(() => client.close())
  const started = performance.now()
  const first = client.get('/quote')
  await until(() => client.stats().circuit === 'open', 'the circuit to open', 2_000)
  const error = await circuitOpenError(client.get('/other'))
  t.ok(error.remainingMs > 500 && error.remainingMs <= 1_000, `remainingMs ${error.remainingMs}`)
  t.ok(Number.isInteger(error.remainingMs), 'whole ms on the monotonic clock too')
  t.match(error.message, /half-opens in \d+ ms$/)
  const res = await first
  const elapsed = performance.now() - started
  t.equal(res.statusCode, 200)
  t.ok(elapsed >= 990 && elapsed < 2_500, `retried after about a second (${Math.round(elapsed)} ms)`)
  t.equal(upstream.hits.length, 2)
  t.equal(client.stats().circuit, 'closed')
  await poolIdle(client)
})

test('a Retry-After wins over the failure threshold\'s recoveryMs: the circuit opens until the time asked', async (t) => {
  const upstream = await timedUpstream(t, firstThenOk({ status: 503, headers: { 'retry-after': '1' } }))
  const clock = new ManualClock()
  const client = clocked(t, upstream, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: RECOVERY } })
  const first = client.get('/quote')
  await untilTimer(clock, 1_000)
  t.equal((await circuitOpenError(client.get('/other'))).remainingMs, 1_000, 'not RECOVERY: the upstream asked for one second')
  clock.advance(1_000)
  const res = await first
  t.equal(res.statusCode, 200, 'the retry is the probe')
  t.equal(client.stats().circuit, 'closed')
  await poolIdle(client)
})
