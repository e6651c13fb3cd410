import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { CircuitOpenError, TimeoutError, UpstreamError } from '../lib/errors'
import { CHANNELS, type CircuitEvent, type RetrySkippedEvent } from '../lib/telemetry/events'
import type { HttpClient } from '../lib/api/http-client'
import type { HttpResponse } from '../lib/pipeline/response'
import { type ClockedClientOptions, ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { sendJson, startUpstream, type Upstream, refusedPort, rejection } from './helpers/upstream'
import { dispatcherOption } from './helpers/dispatcher'
import { published } from './helpers/wait'

const RECOVERY = 10_000
const ATTEMPT_TIMEOUT = 50_000

type Mode = number | 'hold'

/** An upstream whose answer is set by the test: a status, or `hold` to keep requests open. */
interface Scripted extends Upstream {
  mode: Mode
  held: ServerResponse[]
  release(status: number): void
}

async function scriptedUpstream (t: Test, mode: Mode = 503): Promise<Scripted> {
  const held: ServerResponse[] = []
  let scripted: Scripted | null = null
  const upstream = await startUpstream((_req, res) => {
    const current = (scripted as Scripted).mode
    if (current === 'hold') held.push(res)
    else sendJson(res, current, { status: current })
  })
  t.teardown(() => upstream.close())
  scripted = Object.assign(upstream, {
    mode,
    held,
    release (status: number) {
      for (const res of held.splice(0)) sendJson(res, status, { status })
    }
  })
  return scripted
}

function breakerClient (t: Test, baseUrl: string, clock: ManualClock, options: Partial<ClockedClientOptions> = {}): HttpClient {
  const client = clockedClient({
    name: 'payments',
    baseUrl,
    timeout: ATTEMPT_TIMEOUT,
    totalTimeout: 100_000,
    retry: false,
    circuitBreaker: { failureThreshold: 3, recoveryMs: RECOVERY, halfOpenMaxProbes: 1 },
    ...dispatcherOption(),
    ...options
  }, clock)
  t.teardown(() => client.close())
  return client
}

async function statuses (client: HttpClient, count: number): Promise<number[]> {
  const seen: number[] = []
  for (let i = 0; i < count; i++) seen.push((await client.get('/pay')).statusCode)
  return seen
}

test('failureThreshold consecutive 5xx open the circuit: calls are refused at once, nothing is sent', async (t) => {
  const upstream = await scriptedUpstream(t, 503)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock)

  t.same(await statuses(client, 2), [503, 503])
  t.equal(client.stats().circuit, 'closed')
  t.same(await statuses(client, 1), [503])
  t.equal(client.stats().circuit, 'open')
  t.equal(upstream.hits.length, 3)

  clock.advance(2_500)
  const error = await rejection(client.get('/pay'))
  t.ok(error instanceof CircuitOpenError, 'CircuitOpenError')
  const open = error as CircuitOpenError
  t.equal(open.code, 'FRH_CIRCUIT_OPEN')
  t.equal(open.clientName, 'payments')
  t.equal(open.method, 'GET')
  t.equal(open.path, '/pay')
  t.equal(open.remainingMs, RECOVERY - 2_500)

  clock.advance(1_000)
  const second = await rejection(client.post('/pay', { json: {} }))
  t.equal((second as CircuitOpenError).remainingMs, RECOVERY - 3_500)
  await sleep(30)
  t.equal(upstream.hits.length, 3, 'the upstream saw nothing more')
  const stats = client.stats()
  t.equal(stats.circuit, 'open')
  t.equal(stats.shortCircuited, 2)
  t.equal(stats.requests, 5)
  t.equal(stats.failures, 3, 'refused calls are not upstream failures')
  t.equal(stats.inFlight, 0)

  clock.advance(RECOVERY - 3_501)
  t.equal(client.stats().circuit, 'open', '1 ms before recoveryMs')
  t.equal(((await rejection(client.get('/pay'))) as CircuitOpenError).remainingMs, 1)
  clock.advance(1)
  t.equal(client.stats().circuit, 'half-open', 'half-open from the clock alone, before any call')

  upstream.mode = 200
  const res = await client.get('/pay')
  t.equal(res.statusCode, 200)
  t.equal(client.stats().circuit, 'closed', 'a probe success closes it')
  t.same(await statuses(client, 2), [200, 200])
  t.equal(upstream.hits.length, 6)
})

test('half-open lets exactly halfOpenMaxProbes calls through at once', async (t) => {
  const upstream = await scriptedUpstream(t, 500)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY, halfOpenMaxProbes: 2 } })
  await statuses(client, 2)
  t.equal(client.stats().circuit, 'open')
  clock.advance(RECOVERY)

  upstream.mode = 'hold'
  const calls = Array.from({ length: 6 }, () => client.get('/pay').then(
    (res: HttpResponse) => res.statusCode,
    (error: unknown) => error
  ))
  await until(() => upstream.held.length === 2, 'two probes at the upstream')
  await sleep(50)
  t.equal(upstream.hits.length, 4, 'only the two probes reached the upstream')
  t.equal(client.stats().circuit, 'half-open')
  t.equal(client.stats().inFlight, 2)

  upstream.release(200)
  const outcomes = await Promise.all(calls)
  t.same(outcomes.slice(0, 2), [200, 200])
  const refused = outcomes.slice(2)
  t.equal(refused.length, 4)
  for (const error of refused) {
    t.ok(error instanceof CircuitOpenError)
    t.equal((error as CircuitOpenError).remainingMs, 0, 'half-open: only the probes are busy')
  }
  t.equal(client.stats().circuit, 'closed')
  t.equal(client.stats().shortCircuited, 4)

  upstream.mode = 200
  const after = await Promise.all(Array.from({ length: 4 }, () => client.get('/pay')))
  t.same(after.map((res) => res.statusCode), [200, 200, 200, 200], 'closed: no limit')
})

test('a probe failure opens the circuit again for another recoveryMs', async (t) => {
  const upstream = await scriptedUpstream(t, 503)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: RECOVERY } })
  await statuses(client, 1)
  clock.advance(RECOVERY)
  t.equal(client.stats().circuit, 'half-open')

  const probe = await client.get('/pay')
  t.equal(probe.statusCode, 503)
  t.equal(client.stats().circuit, 'open')
  const error = await rejection(client.get('/pay'))
  t.equal((error as CircuitOpenError).remainingMs, RECOVERY)
  clock.advance(RECOVERY - 1)
  t.equal(client.stats().circuit, 'open')
  clock.advance(1)
  t.equal(client.stats().circuit, 'half-open')
  t.equal(upstream.hits.length, 2)
})

test('a non-5xx response resets the count of consecutive failures', async (t) => {
  const upstream = await scriptedUpstream(t, 503)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock)
  await statuses(client, 2)
  upstream.mode = 404
  await statuses(client, 1)
  upstream.mode = 503
  await statuses(client, 2)
  t.equal(client.stats().circuit, 'closed', '503, 503, 404, 503, 503: never three in a row')
  upstream.mode = 429
  await statuses(client, 1)
  upstream.mode = 502
  await statuses(client, 2)
  t.equal(client.stats().circuit, 'closed', 'a 429 resets it too')
  await statuses(client, 1)
  t.equal(client.stats().circuit, 'open')
  t.equal(upstream.hits.length, 9)
})

test('transport failures count', async (t) => {
  const port = await refusedPort()
  const clock = new ManualClock()
  const client = breakerClient(t, `http://127.0.0.1:${port}`, clock, { circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY } })
  t.ok(await rejection(client.get('/pay')) instanceof UpstreamError)
  t.equal(client.stats().circuit, 'closed')
  t.ok(await rejection(client.get('/pay')) instanceof UpstreamError)
  t.equal(client.stats().circuit, 'open')
  const refused = await rejection(client.get('/pay'))
  t.ok(refused instanceof CircuitOpenError)
  t.equal((refused as CircuitOpenError).remainingMs, RECOVERY)
})

test('attempt timeouts count', async (t) => {
  const upstream = await scriptedUpstream(t, 'hold')
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { timeout: 1_000, circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY } })
  for (let i = 1; i <= 2; i++) {
    const outcome = rejection(client.get('/pay'))
    await until(() => upstream.hits.length === i, `attempt ${i} at the upstream`)
    clock.advance(1_000)
    const error = await outcome
    t.ok(error instanceof TimeoutError)
    t.equal((error as TimeoutError).kind, 'attempt')
  }
  t.equal(client.stats().circuit, 'open')
  t.ok(await rejection(client.get('/pay')) instanceof CircuitOpenError)
  t.equal(upstream.hits.length, 2)
})

test('circuitBreaker: false never opens', async (t) => {
  const upstream = await scriptedUpstream(t, 503)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { circuitBreaker: false })
  const seen = await statuses(client, 12)
  t.same(seen, Array(12).fill(503))
  t.equal(upstream.hits.length, 12)
  t.equal(client.stats().circuit, 'closed')
  t.equal(client.stats().shortCircuited, 0)
})

test('a retry never runs into an open circuit', async (t) => {
  t.test('the failed attempt that opens the circuit ends its call', async (t) => {
    const skipped = published<RetrySkippedEvent>(t, CHANNELS.retrySkipped)
    const upstream = await scriptedUpstream(t, 503)
    const clock = new ManualClock()
    const client = breakerClient(t, upstream.url, clock, {
      name: 'opens-itself',
      retry: { maxAttempts: 5, backoffInitialMs: 100, jitter: 'none' },
      circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY }
    })
    const pending = client.get('/pay')
    await untilTimer(clock, 100)
    clock.advance(100)
    const res = await pending
    t.equal(res.statusCode, 503, 'ends with its last failure')
    t.equal(res.attempts, 2)
    t.equal(upstream.hits.length, 2)
    t.equal(client.stats().circuit, 'open')
    t.equal(client.stats().retries, 1)
    t.equal(client.stats().shortCircuited, 0)
    t.same(skipped.filter((event) => event.client === 'opens-itself').map((event) => [event.skipped, event.attempt]), [['circuit', 2]])
  })

  t.test('a circuit opened by another call during the wait ends the call, and nothing is sent', async (t) => {
    const skipped = published<RetrySkippedEvent>(t, CHANNELS.retrySkipped)
    const upstream = await scriptedUpstream(t, 503)
    const clock = new ManualClock()
    const client = breakerClient(t, upstream.url, clock, {
      name: 'opened-meanwhile',
      retry: { maxAttempts: 3, backoffInitialMs: 100, jitter: 'none' },
      circuitBreaker: { failureThreshold: 2, recoveryMs: RECOVERY }
    })
    const waiting = client.get('/pay')
    await untilTimer(clock, 100)
    const other = await client.get('/other', { retry: false })
    t.equal(other.statusCode, 503)
    t.equal(client.stats().circuit, 'open')
    clock.advance(100)
    const res = await waiting
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 2)
    t.equal(client.stats().retries, 0, 'no retry was sent')
    t.equal(client.stats().shortCircuited, 0, 'the call was not refused: it had been sent')
    t.same(skipped.filter((event) => event.client === 'opened-meanwhile').map((event) => [event.skipped, event.path]), [['circuit', '/pay']])
  })
})

test('breaker transitions are published with the time left', async (t) => {
  const events = published<CircuitEvent>(t, CHANNELS.circuit)
  const upstream = await scriptedUpstream(t, 503)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { name: 'transitions', circuitBreaker: { failureThreshold: 1, recoveryMs: RECOVERY } })
  await statuses(client, 1)
  clock.advance(RECOVERY)
  await statuses(client, 1)
  clock.advance(RECOVERY)
  upstream.mode = 200
  await statuses(client, 1)
  t.same(events.filter((event) => event.client === 'transitions').map((event) => [event.from, event.to, event.remainingMs]), [
    ['closed', 'open', RECOVERY],
    ['open', 'half-open', 0],
    ['half-open', 'open', RECOVERY],
    ['open', 'half-open', 0],
    ['half-open', 'closed', 0]
  ])
})

test('a probe the caller aborts frees its slot: the next call probes', async (t) => {
  const upstream = await scriptedUpstream(t, 500)
  const clock = new ManualClock()
  const client = breakerClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: RECOVERY, halfOpenMaxProbes: 1 } })
  await statuses(client, 1)
  clock.advance(RECOVERY)
  upstream.mode = 'hold'
  const controller = new AbortController()
  const aborted = rejection(client.get('/pay', { signal: controller.signal }))
  await until(() => upstream.held.length === 1, 'the probe at the upstream')
  t.ok(await rejection(client.get('/pay')) instanceof CircuitOpenError, 'its slot is taken while it runs')
  controller.abort()
  t.equal(await aborted, controller.signal.reason, 'the probe rejects with the signal\'s reason')
  t.equal(client.stats().circuit, 'half-open', 'an aborted probe says nothing of the upstream')
  upstream.mode = 200
  upstream.release(200)
  t.equal((await client.get('/pay')).statusCode, 200, 'the next call is the probe')
  t.equal(client.stats().circuit, 'closed')
})
