import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import { test, type Test } from 'tap'
import { ConcurrencyLimit } from '../lib/policies/concurrency'
import { OverloadedError } from '../lib/errors'
import { CHANNELS, type ConcurrencyLimitEvent, type OverloadedEvent } from '../lib/telemetry/events'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import type { HttpResponse } from '../lib/pipeline/response'
import type { ClientOptions } from '../lib/types'
import { ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { poolIdle, type Step, timedUpstream, type TimedUpstream } from './helpers/timed-upstream'
import { rejection } from './helpers/upstream'
import { published } from './helpers/wait'

function client (t: Test, upstream: TimedUpstream, options: ClientOptions = {}): HttpClient {
  const made = createHttpClient({ name: 'search', baseUrl: upstream.url, retry: false, circuitBreaker: false, ...options })
  t.teardown(() => made.close())
  return made
}

/** Settles `promise` into a value the test can count without awaiting it. */
interface Outcome { done: boolean, response?: HttpResponse, error?: unknown }
function watch (promise: Promise<HttpResponse>): Outcome {
  const outcome: Outcome = { done: false }
  promise.then((response) => {
    outcome.done = true
    outcome.response = response
    return response.text()
  }, (error: unknown) => {
    outcome.done = true
    outcome.error = error
  }).catch(() => {})
  return outcome
}

// The SPEC's example is 1,500 calls against 1,000 on a 2 s upstream; this is the same shape, scaled to a small machine.
const LIMIT = 200
const OFFERED = 300
const CONNECTIONS = 100
const SLOW = 1_000

test(`maxInFlight: ${OFFERED} calls against ${LIMIT} on a slow upstream`, async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: SLOW, body: 'result' }))
  const overloaded = published<OverloadedEvent>(t, CHANNELS.overloaded)
  const search = client(t, upstream, { maxInFlight: LIMIT, pool: { connections: CONNECTIONS }, timeout: 10_000 })

  const outcomes = Array.from({ length: OFFERED }, (_, i) => watch(search.get('/find', { query: { i } })))
  await sleep(50)
  const refused = outcomes.filter((outcome) => outcome.done)
  t.equal(refused.length, OFFERED - LIMIT, 'the calls over the limit are refused at once')
  t.ok(outcomes.slice(LIMIT).every((outcome) => outcome.done), 'the last ones, in call order')
  const error = refused[0].error as OverloadedError
  t.type(error, OverloadedError)
  t.match(error, { code: 'FRH_OVERLOADED', statusCode: 503, limit: LIMIT, clientName: 'search', method: 'GET', path: '/find' })
  t.match(error.message, `${LIMIT} calls already in flight`)
  t.ok(refused.every((outcome) => outcome.error instanceof OverloadedError))
  t.equal(overloaded.length, OFFERED - LIMIT)
  t.same(overloaded[0], { client: 'search', method: 'GET', path: '/find', limit: LIMIT })

  let stats = search.stats()
  t.equal(stats.overloaded, OFFERED - LIMIT)
  t.equal(stats.inFlight, LIMIT)
  t.equal(stats.requests, LIMIT, 'a refused call counts nowhere but in overloaded')
  t.equal(stats.failures, 0)
  t.ok(upstream.hits.length <= CONNECTIONS, `the upstream sees only what the pool can send (${upstream.hits.length})`)

  await until(() => outcomes.every((outcome) => outcome.done), 'every call to end', 10_000)
  t.ok(outcomes.slice(0, LIMIT).every((outcome) => outcome.response?.statusCode === 200), 'every admitted call answered')
  t.equal(upstream.hits.length, LIMIT, 'nothing refused was sent')
  t.ok(upstream.maxOpen() <= CONNECTIONS, `never more than the pool at once (${upstream.maxOpen()})`)
  t.equal(upstream.maxOpen(), CONNECTIONS, 'and the pool was used in full')

  stats = search.stats()
  t.equal(stats.inFlight, 0, 'nothing leaked')
  t.equal(stats.successes, LIMIT)
  await poolIdle(search)
  t.equal(upstream.open(), 0)
  t.equal((await search.get('/find')).statusCode, 200, 'calls are admitted again')
})

test('a call waiting to retry holds its place under maxInFlight', async (t) => {
  const upstream = await timedUpstream(t, (index): Step => index === 0 ? { status: 503 } : { body: 'ok' })
  const clock = new ManualClock()
  const limited = clockedClient({
    name: 'search',
    baseUrl: upstream.url,
    maxInFlight: 1,
    timeout: 100_000,
    totalTimeout: 1_000_000,
    retry: { maxAttempts: 2, backoffInitialMs: 100, jitter: 'none', budget: false },
    circuitBreaker: false
  }, clock)
  t.teardown(() => limited.close())
  const first = limited.get('/a')
  await untilTimer(clock, 100)
  const error = await rejection(limited.get('/b'))
  t.type(error, OverloadedError)
  t.equal((error as OverloadedError).limit, 1)
  clock.advance(100)
  t.equal((await first).statusCode, 200)
  t.equal((await limited.get('/c')).statusCode, 200, 'its place is free once it ended')
  t.equal(upstream.hits.length, 3)
  await poolIdle(limited)
})

test('maxInFlight: false sets no limit', async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 50 }))
  const unlimited = client(t, upstream, { maxInFlight: false, pool: { connections: 50 } })
  const responses = await Promise.all(Array.from({ length: 1_200 }, () => unlimited.get('/find')))
  t.ok(responses.every((res) => res.statusCode === 200))
  t.equal(unlimited.stats().overloaded, 0)
  t.ok(upstream.maxOpen() <= 50)
  await poolIdle(unlimited)
})

test('the adaptive limit, step by step', async (t) => {
  await t.test('shrinks by 10 % (floored) on a drop, down to min', async (t) => {
    const changes: Array<[number, number]> = []
    const limit = new ConcurrencyLimit(1_000, { initial: 20, min: 5, max: 40 }, (from, to) => changes.push([from, to]))
    const seen: number[] = []
    for (let i = 0; i < 12; i++) {
      limit.onAttempt(true)
      seen.push(limit.adaptiveLimit as number)
    }
    t.same(seen, [18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 5, 5])
    t.equal(changes.length, 10, 'a change is reported only when the limit moves')
    t.same(changes[0], [20, 18])
  })

  await t.test('grows by one on an answer while at least half of it is in use, up to max', async (t) => {
    const limit = new ConcurrencyLimit(1_000, { initial: 20, min: 1, max: 22 }, () => {})
    for (let i = 0; i < 9; i++) t.ok(limit.tryAcquire())
    limit.onAttempt(false)
    t.equal(limit.adaptiveLimit, 20, '9 of 20 in use: below half, no growth')
    t.ok(limit.tryAcquire())
    limit.onAttempt(false)
    t.equal(limit.adaptiveLimit, 21, '10 of 20 in use: +1')
    t.ok(limit.tryAcquire())
    limit.onAttempt(false)
    t.equal(limit.adaptiveLimit, 22, '11 of 21: +1')
    limit.onAttempt(false)
    t.equal(limit.adaptiveLimit, 22, 'not past max')
  })

  await t.test('refuses a call over the limit in force, the smaller of maxInFlight and the adaptive limit', async (t) => {
    const limit = new ConcurrencyLimit(1_000, { initial: 3, min: 1, max: 10 }, () => {})
    t.equal(limit.limit, 3)
    for (let i = 0; i < 3; i++) t.ok(limit.tryAcquire())
    t.notOk(limit.tryAcquire(), 'over the adaptive limit')
    limit.onAttempt(true)
    t.equal(limit.limit, 2)
    limit.release()
    t.notOk(limit.tryAcquire(), '2 in use against 2')
    limit.release()
    t.ok(limit.tryAcquire())

    const capped = new ConcurrencyLimit(4, { initial: 20, min: 1, max: 1_000 }, () => {})
    t.equal(capped.limit, 4, 'maxInFlight is smaller')
    for (let i = 0; i < 4; i++) t.ok(capped.tryAcquire())
    t.notOk(capped.tryAcquire())
  })

  await t.test('off: no adaptive limit, maxInFlight alone', async (t) => {
    const limit = new ConcurrencyLimit(2, false, () => { t.fail('no change when off') })
    t.equal(limit.adaptiveLimit, undefined)
    t.equal(limit.limit, 2)
    limit.onAttempt(true)
    t.equal(limit.limit, 2)
  })
})

test('the adaptive limit on a client: stats, the channel, a log line at most once a second', async (t) => {
  const upstream = await timedUpstream(t, () => ({ status: 503 }))
  const lines: Array<{ msg: string }> = []
  const logger = pino({ level: 'info' }, { write (line: string) { lines.push(JSON.parse(line) as { msg: string }) } })
  const events = published<ConcurrencyLimitEvent>(t, CHANNELS.concurrencyLimit)
  const clock = new ManualClock()
  const adaptive = clockedClient({
    name: 'search',
    baseUrl: upstream.url,
    logger,
    retry: false,
    circuitBreaker: false,
    timeout: 100_000,
    totalTimeout: 1_000_000,
    adaptiveConcurrency: true
  }, clock)
  t.teardown(() => adaptive.close())
  t.equal(adaptive.stats().concurrencyLimit, 20, 'the default start')
  for (let i = 0; i < 3; i++) t.equal((await adaptive.get('/find')).statusCode, 503)
  t.equal(adaptive.stats().concurrencyLimit, 14, '20 -> 18 -> 16 -> 14')
  t.same(events.map((event) => [event.from, event.to]), [[20, 18], [18, 16], [16, 14]])
  t.match(events[0], { client: 'search' })
  const logged = (): string[] => lines.filter((line) => line.msg.startsWith('concurrency limit')).map((line) => line.msg)
  t.same(logged(), ['concurrency limit 18 (was 20)'], 'one line in the first second')
  clock.advance(999)
  await adaptive.get('/find')
  t.equal(logged().length, 1)
  clock.advance(1)
  await adaptive.get('/find')
  t.same(logged(), ['concurrency limit 18 (was 20)', 'concurrency limit 10 (was 12)'], 'a second later, the next change')
  t.equal(events.length, 5, 'every change is published')

  const plain = client(t, upstream)
  t.equal(plain.stats().concurrencyLimit, undefined, 'undefined when off')
  await poolIdle(adaptive)
})

test('a call over the adaptive limit is refused with OverloadedError', async (t) => {
  const upstream = await timedUpstream(t, () => ({ delayMs: 200 }))
  const adaptive = client(t, upstream, { adaptiveConcurrency: { initial: 2, min: 1, max: 5 } })
  const running = [adaptive.get('/a'), adaptive.get('/b')]
  const error = await rejection(adaptive.get('/c'))
  t.type(error, OverloadedError)
  t.equal((error as OverloadedError).limit, 2)
  t.equal(adaptive.stats().overloaded, 1)
  for (const res of await Promise.all(running)) t.equal(res.statusCode, 200)
  t.equal(upstream.hits.length, 2)
  await poolIdle(adaptive)
})

/** Capacity of the upstream below: past it, it answers 503 at once. */
const CAPACITY = 16
const CALLERS = 64

/** 64 callers in a loop for `ms`: each answer's time (from the start) and status, and the limit sampled every 50 ms. */
async function offerLoad (target: HttpClient, ms: number): Promise<{ answers: Array<[number, number]>, limits: number[] }> {
  const answers: Array<[number, number]> = []
  const limits: number[] = []
  const start = performance.now()
  const end = start + ms
  const sampler = setInterval(() => { limits.push(target.stats().concurrencyLimit ?? Infinity) }, 50)
  await Promise.all(Array.from({ length: CALLERS }, async () => {
    for (let i = 0; i < 20_000 && performance.now() < end; i++) {
      try {
        const res = await target.get('/find')
        await res.text()
        answers.push([performance.now() - start, res.statusCode])
      } catch (error) {
        if (!(error instanceof OverloadedError)) throw error
        await sleep(2)
      }
    }
  }))
  clearInterval(sampler)
  return { answers, limits }
}

function share503 (answers: Array<[number, number]>, from: number, to: number): number {
  const inWindow = answers.filter(([at]) => at >= from && at < to)
  return inWindow.filter(([, status]) => status === 503).length / Math.max(1, inWindow.length)
}

test('under real traffic the adaptive limit settles near what the upstream can take', async (t) => {
  // Slower as it gets busier, and 503 at once past 16 requests in progress.
  const plan = (_index: number, open: number): Step => open > CAPACITY ? { status: 503 } : { delayMs: 10 + 2 * open }
  const upstream = await timedUpstream(t, plan)
  const options = { retry: false, circuitBreaker: false, pool: { connections: CALLERS } } as const
  const adaptive = client(t, upstream, { ...options, adaptiveConcurrency: { initial: 20, min: 1, max: 100 } })
  const { answers, limits } = await offerLoad(adaptive, 2_500)
  const lastSecond = limits.slice(-20).sort((a, b) => a - b)
  const median = lastSecond[Math.floor(lastSecond.length / 2)]
  t.ok(median >= 8 && median <= 24, `the limit settled at ${median} (last second: ${lastSecond.join(' ')})`)
  const withLimit = share503(answers, 1_500, 2_500)
  t.ok(answers.filter(([at]) => at >= 1_500).length > 100, 'the upstream kept serving')
  await poolIdle(adaptive)

  // The same load without the adaptive limit: almost every answer is a 503.
  const unlimited = client(t, upstream, options)
  const control = await offerLoad(unlimited, 1_000)
  const without = share503(control.answers, 0, 1_000)
  t.ok(withLimit < 0.6, `with the limit ${Math.round(withLimit * 100)} % of answers are 503s`)
  t.ok(without > 0.7, `without it ${Math.round(without * 100)} %`)
  t.ok(withLimit < without - 0.2, 'the limit keeps the load near what the upstream can take')
  await poolIdle(unlimited)
  t.equal(adaptive.stats().inFlight, 0)
  t.equal(unlimited.stats().inFlight, 0)
})
