import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { CircuitOpenError, TimeoutError } from '../lib/errors'
import { CHANNELS, type CircuitEvent } from '../lib/telemetry/events'
import type { HttpClient } from '../lib/api/http-client'
import { createHttpClient } from '../lib/api/http-client'
import type { Logger } from '../lib/logger'
import type { RandomSource } from '../lib/clock'
import { type ClockedClientOptions, ManualClock, clockedClient, until } from './helpers/manual-clock'
import { type Hit, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'
import { dispatcherOption } from './helpers/dispatcher'
import { published } from './helpers/wait'

const PATIENT = { timeout: 50_000, totalTimeout: 100_000 }

/** 30 % of calls fail, spread so that no two failures come in a row: the consecutive rule never fires. */
const thirtyPercent = (index: number): number => [0, 3, 6].includes(index % 10) ? 503 : 200
/** One call in twenty fails. */
const fivePercent = (index: number): number => index % 20 === 7 ? 503 : 200

/**
 * An upstream that counts and answers only requests under its own random
 * base path (`url` includes it); anything else gets a 421, uncounted. On a
 * busy machine a port freed by another process's test may be given to this
 * one while that process's client still sends to it: such a request must not
 * take the index the first call's status was chosen for.
 */
async function ownUpstream (t: Test, handler: (res: ServerResponse, index: number) => void): Promise<Upstream> {
  const basePath = `/${randomUUID()}`
  const hits: Hit[] = []
  const upstream = await startUpstream((_req, res, hit) => {
    if (!hit.url.startsWith(`${basePath}/`)) {
      res.writeHead(421).end()
      return
    }
    hits.push(hit)
    handler(res, hits.length - 1)
  })
  t.teardown(() => upstream.close())
  return { ...upstream, url: upstream.url + basePath, hits }
}

/** An upstream that answers the status `statusOf` gives each request's index. */
async function statusUpstream (t: Test, statusOf: (index: number) => number): Promise<Upstream> {
  return ownUpstream(t, (res, index) => { sendJson(res, statusOf(index), { index }) })
}

/** An upstream that holds every request until the test releases it, so the manual clock can move while they wait. */
async function heldUpstream (t: Test): Promise<Upstream & { held: ServerResponse[], release(status: number): void }> {
  const held: ServerResponse[] = []
  const upstream = await ownUpstream(t, (res) => { held.push(res) })
  return Object.assign(upstream, {
    held,
    release (status: number) {
      for (const res of held.splice(0)) sendJson(res, status, { status })
    }
  })
}

function ratioClient (t: Test, baseUrl: string, clock: ManualClock, options: Partial<ClockedClientOptions> = {}, random?: RandomSource): HttpClient {
  const client = clockedClient({ name: 'payments', baseUrl, ...PATIENT, retry: false, ...dispatcherOption(), ...options }, clock, random)
  t.teardown(() => client.close())
  return client
}

/** Sends `count` calls one after the other, `gapMs` of the clock apart; the statuses, or `'open'` once refused. */
async function calls (client: HttpClient, clock: ManualClock, count: number, gapMs: number): Promise<Array<number | 'open'>> {
  const seen: Array<number | 'open'> = []
  for (let i = 0; i < count; i++) {
    try {
      const res = await client.get('/pay')
      await res.text()
      seen.push(res.statusCode)
    } catch (error) {
      if (!(error instanceof CircuitOpenError)) throw error
      seen.push('open')
    }
    clock.advance(gapMs)
  }
  return seen
}

/** Sends `count` calls at once to a held upstream, moves the clock `latencyMs` while they wait, then answers them all `status`. */
async function batch (client: HttpClient, clock: ManualClock, upstream: Awaited<ReturnType<typeof heldUpstream>>, count: number, latencyMs: number, status = 200): Promise<unknown[]> {
  const pending = Array.from({ length: count }, () => client.get('/pay').then(async (res) => {
    await res.text()
    return res.statusCode
  }, (error: unknown) => error))
  await until(() => upstream.held.length === count, `${count} held requests`)
  clock.advance(latencyMs)
  upstream.release(status)
  return Promise.all(pending)
}

test('failureRatio opens on a partial outage within the first window, long before five failures come in a row', async (t) => {
  const upstream = await statusUpstream(t, thirtyPercent)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureRatio: 0.3 } })
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)

  // 10 calls a second: the 20th call (minimumThroughput) is the first the ratio may judge, and 6 of 20 failed.
  const seen = await calls(client, clock, 25, 100)
  t.same(seen.slice(0, 20), Array.from({ length: 20 }, (_, i) => thirtyPercent(i)))
  t.same(seen.slice(20), ['open', 'open', 'open', 'open', 'open'], 'open from the 20th attempt on, 2 s into a 10 s window')
  t.equal(upstream.hits.length, 20)
  t.same(circuit, [{ client: 'payments', from: 'closed', to: 'open', remainingMs: 30_000, cause: 'failure-ratio' }])
  const error = await rejection(client.get('/pay')) as CircuitOpenError
  t.equal(error.openedBy, 'failure-ratio')
  t.equal(error.cause, undefined, 'the standard Error cause is left alone')
  t.match(error.message, /circuit open \(failure-ratio\), half-opens in \d+ ms$/)
})

test('failureRatio never opens at 5 % failures', async (t) => {
  const upstream = await statusUpstream(t, fivePercent)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureRatio: 0.3 } })
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  // 40 s at 10 calls a second: four windows (benchmarks/breaker-sim.js runs hours of it).
  const seen = await calls(client, clock, 400, 100)
  t.equal(seen.filter((status) => status === 503).length, 20)
  t.equal(seen.includes('open'), false)
  t.same(circuit, [], 'never opened')
  t.equal(client.stats().circuit, 'closed')
})

test('minimumThroughput: no ratio before that many attempts are judged in the window', async (t) => {
  const upstream = await statusUpstream(t, () => 500)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1_000, failureRatio: 0.5, minimumThroughput: 8 } })
  const seen = await calls(client, clock, 7, 10)
  t.same(seen, [500, 500, 500, 500, 500, 500, 500], '7 of 7 failed, but 7 are fewer than 8')
  t.equal(client.stats().circuit, 'closed')
  t.same(await calls(client, clock, 2, 10), [500, 'open'], 'the 8th opens it')
  const error = await rejection(client.get('/pay')) as CircuitOpenError
  t.equal(error.openedBy, 'failure-ratio')
})

test('the window forgets: buckets older than samplingMs leave the ratio', async (t) => {
  let failing = true
  const upstream = await statusUpstream(t, () => failing ? 500 : 200)
  const clock = new ManualClock()
  const options = { circuitBreaker: { failureThreshold: 1_000, failureRatio: 0.5, minimumThroughput: 10, samplingMs: 10_000 } }

  await t.test('failures older than the window are gone', async (t) => {
    const client = ratioClient(t, upstream.url, clock, options)
    failing = true
    await calls(client, clock, 5, 0)
    clock.advance(11_000)
    failing = false
    await calls(client, clock, 5, 0)
    failing = true
    t.same(await calls(client, clock, 4, 0), [500, 500, 500, 500], '4 of 9 in the window: below minimumThroughput')
    t.equal(client.stats().circuit, 'closed')
    t.same(await calls(client, clock, 2, 0), [500, 'open'], '5 of 10 failed: open')
  })

  await t.test('failures within the window still count', async (t) => {
    const client = ratioClient(t, upstream.url, clock, options)
    failing = true
    await calls(client, clock, 5, 0)
    clock.advance(5_000)
    failing = false
    t.same(await calls(client, clock, 6, 0), [200, 200, 200, 200, 200, 'open'],
      'the 10th attempt, a success, brings the window to minimumThroughput with 5 of 10 failed')
  })

  await t.test('a bucket leaves the window a tenth of samplingMs at a time', async (t) => {
    const client = ratioClient(t, upstream.url, clock, options)
    failing = true
    await calls(client, clock, 5, 0)
    // 9.5 s later the first bucket may be gone, or not, by the bucket edges: 10 s and more later it is.
    clock.advance(10_000)
    failing = false
    t.same(await calls(client, clock, 5, 0), [200, 200, 200, 200, 200])
    t.equal(client.stats().circuit, 'closed', 'the five failures left with their bucket')
  })
})

test('slow calls: a latency step from 50 ms to 2 s opens the circuit within one window, every answer a 200', async (t) => {
  const upstream = await heldUpstream(t)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { slowCallMs: 1_000, minimumThroughput: 10 } })
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)

  for (let i = 0; i < 3; i++) t.same(await batch(client, clock, upstream, 10, 50), Array(10).fill(200), 'fast batch')
  const stepAt = clock.now()
  t.same(await batch(client, clock, upstream, 10, 2_000), Array(10).fill(200), '10 slow of 40')
  t.same(await batch(client, clock, upstream, 10, 2_000), Array(10).fill(200), '20 slow of 50')
  t.equal(client.stats().circuit, 'closed')
  t.same(await batch(client, clock, upstream, 10, 2_000), Array(10).fill(200), 'the 30th slow of 60 reaches slowCallRatio 0.5')
  t.equal(client.stats().circuit, 'open')
  t.same(circuit.map((event) => event.cause), ['slow-calls'])
  t.ok(clock.now() - stepAt <= 10_000, 'within one window of the step')
  const error = await rejection(client.get('/pay')) as CircuitOpenError
  t.equal(error.openedBy, 'slow-calls')
  t.equal(upstream.hits.length, 60)
})

test('slow calls: answers just at slowCallMs are not slow; a timeout past slowCallMs is slow (and failed)', async (t) => {
  const upstream = await heldUpstream(t)
  const clock = new ManualClock()

  await t.test('at slowCallMs exactly: not slow', async (t) => {
    const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { slowCallMs: 500, slowCallRatio: 1, minimumThroughput: 4 } })
    t.same(await batch(client, clock, upstream, 4, 500), [200, 200, 200, 200])
    t.equal(client.stats().circuit, 'closed')
    t.same(await batch(client, clock, upstream, 4, 501), [200, 200, 200, 200])
    t.equal(client.stats().circuit, 'closed', '4 slow of 8 is under slowCallRatio 1')
  })

  await t.test('attempt timeouts after slowCallMs', async (t) => {
    const client = ratioClient(t, upstream.url, clock, { timeout: 800, circuitBreaker: { slowCallMs: 500, minimumThroughput: 4 } })
    const pending = Array.from({ length: 4 }, () => rejection(client.get('/pay')))
    await until(() => upstream.held.length === 4, '4 held requests')
    clock.advance(800)
    const errors = await Promise.all(pending)
    t.ok(errors.every((error) => error instanceof TimeoutError), 'every attempt timed out')
    upstream.release(200)
    const error = await rejection(client.get('/pay')) as CircuitOpenError
    t.equal(error.openedBy, 'slow-calls', 'four failures are under failureThreshold; four slow of four opened it')
  })
})

test('the rules add up: whichever fires first opens the circuit', async (t) => {
  const upstream = await statusUpstream(t, () => 503)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 3, failureRatio: 0.5, minimumThroughput: 20 } })
  t.same(await calls(client, clock, 4, 10), [503, 503, 503, 'open'])
  t.equal((await rejection(client.get('/pay')) as CircuitOpenError).openedBy, 'failures')
})

test('recoveryMaxMs: each failed probe doubles the open time, ± 25 % at random, up to the cap; a close resets it', async (t) => {
  let status = 503
  const upstream = await statusUpstream(t, () => status)
  const clock = new ManualClock()
  const draws = [0, 0.999_999, 0.5, 0, 0.999_999, 0]
  let drawn = 0
  const random = (): number => draws[drawn++ % draws.length]
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: 1_000, recoveryMaxMs: 8_000 } }, random)
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const openTimes = (): number[] => circuit.filter((event) => event.to === 'open').map((event) => event.remainingMs)

  t.same(await calls(client, clock, 1, 0), [503])
  t.same(openTimes(), [1_000], 'the rule opens for recoveryMs, without jitter')
  for (const expected of [1_500, 5_000, 8_000, 6_000, 8_000]) {
    clock.advance(openTimes().at(-1) as number)
    t.same(await calls(client, clock, 1, 0), [503], 'a probe, failing')
    t.equal(openTimes().at(-1), expected)
  }
  // Bases 2 s, 4 s, 8 s, 8 s, 8 s: 2 × 0.75, 4 × 1.25, 8 × 1.0, 8 × 0.75, and 8 × 1.25 capped at 8 s.
  t.equal(drawn, 5, 'one draw per failed probe')
  t.equal(await rejection(client.get('/pay')) instanceof CircuitOpenError, true)
  t.equal((await rejection(client.get('/pay')) as CircuitOpenError).openedBy, 'failures', 'a failed probe keeps the rule that opened it')
  t.same(circuit.filter((event) => event.to === 'open').map((event) => event.cause), ['failures', 'probe', 'probe', 'probe', 'probe', 'probe'])

  clock.advance(8_000)
  status = 200
  t.same(await calls(client, clock, 1, 0), [200], 'a probe, succeeding')
  t.equal(client.stats().circuit, 'closed')
  status = 503
  t.same(await calls(client, clock, 1, 0), [503])
  t.equal(openTimes().at(-1), 1_000, 'after a close, recoveryMs again')
  clock.advance(1_000)
  t.same(await calls(client, clock, 1, 0), [503])
  t.equal(openTimes().at(-1), 1_500, 'and a failed probe doubles from recoveryMs again (2 s × 0.75)')
})

test('recoveryMaxMs: with a real random source every open time stays within a quarter of its doubling', async (t) => {
  const upstream = await statusUpstream(t, () => 503)
  const clock = new ManualClock()
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: 1_000, recoveryMaxMs: 100_000 } }, Math.random)
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const openTimes = (): number[] => circuit.filter((event) => event.to === 'open').map((event) => event.remainingMs)
  await calls(client, clock, 1, 0)
  for (let probe = 1; probe <= 8; probe++) {
    clock.advance(openTimes().at(-1) as number)
    await calls(client, clock, 1, 0)
    const base = Math.min(100_000, 1_000 * 2 ** probe)
    const ms = openTimes().at(-1) as number
    t.ok(ms >= 0.75 * base && ms <= Math.min(100_000, 1.25 * base), `failed probe ${probe}: ${ms} ms, within 25 % of ${base} ms and the cap`)
  }
  t.equal(openTimes().length, 9)
})

test('without recoveryMaxMs a failed probe reopens for recoveryMs, with no draw', async (t) => {
  const upstream = await statusUpstream(t, () => 503)
  const clock = new ManualClock()
  let drawn = 0
  const client = ratioClient(t, upstream.url, clock, { circuitBreaker: { failureThreshold: 1, recoveryMs: 1_000 } }, () => { drawn++; return 0.5 })
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  for (let i = 0; i < 3; i++) {
    await calls(client, clock, 1, 0)
    clock.advance(1_000)
  }
  t.same(circuit.filter((event) => event.to === 'open').map((event) => event.remainingMs), [1_000, 1_000, 1_000])
  t.equal(drawn, 0)
})

test('the log line says which rule opened the circuit', async (t) => {
  const upstream = await statusUpstream(t, () => 503)
  const clock = new ManualClock()
  const lines: Array<{ level: string, obj: object, msg: string | undefined }> = []
  const logger: Logger = {
    info (obj, msg) { lines.push({ level: 'info', obj, msg }) },
    warn (obj, msg) { lines.push({ level: 'warn', obj, msg }) }
  }
  const client = ratioClient(t, upstream.url, clock, { logger, circuitBreaker: { failureThreshold: 100, failureRatio: 1, minimumThroughput: 2, recoveryMs: 1_000 } })
  await calls(client, clock, 2, 0)
  t.equal(lines.length, 1)
  t.match(lines[0], { level: 'warn', obj: { client: 'payments', to: 'open', cause: 'failure-ratio' }, msg: 'circuit open for 1000 ms: the failure ratio over the window was reached' })
  clock.advance(1_000)
  await calls(client, clock, 1, 0)
  t.match(lines.at(-1), { level: 'warn', obj: { cause: 'probe' }, msg: 'circuit open for 1000 ms: a probe failed' })
})

test('over real sockets and the real clock: an upstream failing 30 % of calls opens the ratio rule', async (t) => {
  const upstream = await statusUpstream(t, thirtyPercent)
  const client = createHttpClient({ name: 'flaky', baseUrl: upstream.url, retry: false, circuitBreaker: { failureRatio: 0.25 }, ...dispatcherOption() })
  t.teardown(() => client.close())
  const circuit = published<CircuitEvent>(t, CHANNELS.circuit)
  const seen: Array<number | string> = []
  for (let i = 0; i < 60 && client.stats().circuit === 'closed'; i++) {
    const res = await client.get('/flaky')
    await res.text()
    seen.push(res.statusCode)
  }
  t.equal(seen.length, 20, 'open at minimumThroughput: 6 of 20 failed, none two in a row')
  t.same(circuit.map((event) => event.cause), ['failure-ratio'])
  const error = await rejection(client.get('/flaky'))
  t.ok(error instanceof CircuitOpenError)
  t.equal((error as CircuitOpenError).openedBy, 'failure-ratio')
  t.equal(upstream.hits.length, 20, 'nothing sent once open')
})

test('over real sockets and the real clock: a slow upstream opens the slow-call rule, though it answers 200', async (t) => {
  const upstream = await startUpstream(async (_req, res) => {
    await sleep(300)
    sendJson(res, 200, { ok: true })
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'sluggish', baseUrl: upstream.url, retry: false, circuitBreaker: { slowCallMs: 100, minimumThroughput: 5 }, ...dispatcherOption() })
  t.teardown(() => client.close())
  const statuses = await Promise.all(Array.from({ length: 5 }, () => client.get('/slow').then(async (res) => {
    await res.text()
    return res.statusCode
  })))
  t.same(statuses, [200, 200, 200, 200, 200])
  t.equal(client.stats().circuit, 'open')
  const error = await rejection(client.get('/slow'))
  t.equal((error as CircuitOpenError).openedBy, 'slow-calls')
  t.equal(upstream.hits.length, 5)
})
