import diagnosticsChannel from 'node:diagnostics_channel'
import { Readable } from 'node:stream'
import Fastify from 'fastify'
import pino from 'pino'
import { test, type Test } from 'tap'
import resilientHttp from '../plugin'
import { type HttpClient } from '../lib/api/http-client'
import { CHANNELS, type CircuitEvent, type RetryEvent, type RetrySkippedEvent } from '../lib/telemetry/events'
import type { ClientOptions } from '../lib/types'
import './helpers/fastify-types'
import { ManualClock, clockedClient, until, untilTimer } from './helpers/manual-clock'
import { clientFor, type Handler, sendJson, refusedPort, upstreamFor } from './helpers/upstream'

/** Timeouts that only a hung call reaches, so a busy machine cannot fail these tests. */
const PATIENT = { timeout: 60_000, totalTimeout: 120_000 }

const QUICK = { backoffInitialMs: 5, backoffMaxMs: 100, jitter: 'none' } as const

interface LogLine {
  level: number
  msg: string
  client?: string
  [key: string]: unknown
}

/** Events published on one channel while the test runs, for one client. */
function listen<T extends { client: string }> (t: Test, channel: string, client: string): T[] {
  const events: T[] = []
  const listener = (message: unknown): void => {
    if ((message as T).client === client) events.push(message as T)
  }
  diagnosticsChannel.subscribe(channel, listener)
  t.teardown(() => { diagnosticsChannel.unsubscribe(channel, listener) })
  return events
}

function capturingLogger (): { logger: pino.Logger, lines: LogLine[] } {
  const lines: LogLine[] = []
  const logger = pino({ level: 'debug' }, { write (line: string) { lines.push(JSON.parse(line) as LogLine) } })
  return { logger, lines }
}

function namedClient (t: Test, name: string, baseUrl: string, options: ClientOptions = {}, logger?: pino.Logger): HttpClient {
  return clientFor(t, { name, baseUrl, circuitBreaker: false, retry: QUICK, logger, ...PATIENT, ...options })
}

function always (status: number, headers: Record<string, string> = {}): Handler {
  return (_req, res) => sendJson(res, status, { status }, headers)
}

function failing (status: number, failures: number): Handler {
  return (_req, res, _hit, index) => sendJson(res, index < failures ? status : 200, {})
}

test('each retry publishes client, method, path, attempt, reason and wait', async (t) => {
  const retries = listen<RetryEvent>(t, CHANNELS.retry, 'retrying')
  const skipped = listen<RetrySkippedEvent>(t, CHANNELS.retrySkipped, 'retrying')
  const upstream = await upstreamFor(t, failing(503, 2))
  const client = namedClient(t, 'retrying', upstream.url)
  const res = await client.get('/orders', { query: { page: 2 } })
  t.equal(res.attempts, 3)
  t.same(retries, [
    { client: 'retrying', method: 'GET', path: '/orders', attempt: 1, reason: 'status 503', waitMs: 5 },
    { client: 'retrying', method: 'GET', path: '/orders', attempt: 2, reason: 'status 503', waitMs: 10 }
  ])
  t.same(skipped, [], 'a call that succeeded skipped nothing')
})

test('a transport failure and a timeout are named in the reason', async (t) => {
  t.test('refused', async (t) => {
    const retries = listen<RetryEvent>(t, CHANNELS.retry, 'refused')
    const skipped = listen<RetrySkippedEvent>(t, CHANNELS.retrySkipped, 'refused')
    const port = await refusedPort()
    const client = namedClient(t, 'refused', `http://127.0.0.1:${port}`, { retry: { ...QUICK, maxAttempts: 2 } })
    await client.delete('/session').catch(() => {})
    t.same(retries.map((event) => [event.method, event.reason, event.attempt]), [['DELETE', 'ECONNREFUSED', 1]])
    t.same(skipped.map((event) => [event.skipped, event.reason, event.attempt]), [['attempts', 'ECONNREFUSED', 2]])
  })
  t.test('attempt timeout', async (t) => {
    const retries = listen<RetryEvent>(t, CHANNELS.retry, 'slow')
    const upstream = await upstreamFor(t, (_req, res, _hit, index) => {
      if (index > 0) sendJson(res, 200, {})
    })
    const clock = new ManualClock()
    const client = clockedClient({ name: 'slow', baseUrl: upstream.url, timeout: 1_000, retry: QUICK }, clock)
    t.teardown(() => client.close())
    const pending = client.get('/slow')
    await until(() => upstream.hits.length === 1, 'the first attempt')
    clock.advance(1_000)
    await untilTimer(clock, 5)
    clock.advance(5)
    const res = await pending
    t.equal(res.statusCode, 200)
    t.same(retries.map((event) => [event.reason, event.attempt, event.waitMs]), [['timeout', 1, 5]])
  })
})

test('each retry not made publishes why', async (t) => {
  const cases: Array<[string, ClientOptions, Handler, (client: HttpClient) => Promise<unknown>, Partial<RetrySkippedEvent>]> = [
    ['method', {}, always(503), (client) => client.post('/charge', { json: {} }),
      { method: 'POST', path: '/charge', attempt: 1, reason: 'status 503', skipped: 'method' }],
    ['attempts', { retry: { ...QUICK, maxAttempts: 2 } }, always(502), (client) => client.get('/x'),
      { method: 'GET', attempt: 2, reason: 'status 502', skipped: 'attempts' }],
    ['deadline', { timeout: 5_000, totalTimeout: 5_000 }, always(503, { 'retry-after': '100' }), (client) => client.get('/x'),
      { attempt: 1, reason: 'status 503', skipped: 'deadline' }],
    ['budget', { retry: { ...QUICK, budget: { ratio: 0, minPerSecond: 0 } } }, always(503), (client) => client.get('/x'),
      { attempt: 1, reason: 'status 503', skipped: 'budget' }],
    ['circuit', { circuitBreaker: { failureThreshold: 1 } }, always(500), (client) => client.get('/x'),
      { attempt: 1, reason: 'status 500', skipped: 'circuit' }],
    ['stream-body', {}, always(503), (client) => client.post('/upload', { body: Readable.from([Buffer.from('once')]), idempotencyKey: true }),
      { method: 'POST', path: '/upload', attempt: 1, reason: 'status 503', skipped: 'stream-body' }]
  ]
  for (const [reason, options, handler, call, expected] of cases) {
    t.test(reason, async (t) => {
      const name = `skip_${reason.replace('-', '_')}`
      const skipped = listen<RetrySkippedEvent>(t, CHANNELS.retrySkipped, name)
      const retries = listen<RetryEvent>(t, CHANNELS.retry, name)
      const { logger, lines } = capturingLogger()
      const upstream = await upstreamFor(t, handler)
      const client = namedClient(t, name, upstream.url, options, logger)
      await call(client)
      t.equal(skipped.length, 1)
      t.match(skipped[0], { client: name, ...expected })
      t.same(Object.keys(skipped[0]).sort(), ['attempt', 'client', 'method', 'path', 'reason', 'skipped'])
      t.equal(retries.length, reason === 'attempts' ? 1 : 0)
      const logged = lines.filter((line) => line.skipped === reason)
      t.equal(logged.length, 1, 'logged as well')
      t.equal(logged[0].client, name)
      t.match(logged[0].msg, `: ${reason}`)
    })
  }
})

test('a call with retries turned off publishes no skipped retry', async (t) => {
  const skipped = listen<RetrySkippedEvent>(t, CHANNELS.retrySkipped, 'no_retry')
  const upstream = await upstreamFor(t, always(503))
  const client = namedClient(t, 'no_retry', upstream.url, { retry: false })
  t.equal((await client.get('/x')).statusCode, 503)
  t.same(skipped, [])
})

test('breaker transitions are published and logged', async (t) => {
  const transitions = listen<CircuitEvent>(t, CHANNELS.circuit, 'breaker')
  const { logger, lines } = capturingLogger()
  let status = 503
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, status, {}))
  const clock = new ManualClock()
  const client = clockedClient({
    name: 'breaker',
    baseUrl: upstream.url,
    logger,
    retry: false,
    circuitBreaker: { failureThreshold: 2, recoveryMs: 4_000 }
  }, clock)
  t.teardown(() => client.close())
  await client.get('/x')
  await client.get('/x')
  clock.advance(4_000)
  t.equal(client.stats().circuit, 'half-open')
  status = 200
  await client.get('/x')
  t.same(transitions, [
    { client: 'breaker', from: 'closed', to: 'open', remainingMs: 4_000, cause: 'failures' },
    { client: 'breaker', from: 'open', to: 'half-open', remainingMs: 0, cause: 'recovery' },
    { client: 'breaker', from: 'half-open', to: 'closed', remainingMs: 0, cause: 'probe' }
  ])
  const logged = lines.filter((line) => line.to !== undefined)
  t.same(logged.map((line) => [line.level, line.client, line.from, line.to]), [
    [40, 'breaker', 'closed', 'open'],
    [30, 'breaker', 'open', 'half-open'],
    [30, 'breaker', 'half-open', 'closed']
  ], 'opening is a warning, the rest info')
  t.equal(logged[0].msg, 'circuit open for 4000 ms after consecutive failures')
})

test("log lines come from a child logger bound to the client's name", async (t) => {
  const { logger, lines } = capturingLogger()
  const upstream = await upstreamFor(t, failing(503, 1))
  const client = namedClient(t, 'inventory', upstream.url, {}, logger)
  await client.get('/stock')
  t.equal(lines.length, 1)
  t.match(lines[0], {
    level: 30,
    client: 'inventory',
    method: 'GET',
    path: '/stock',
    attempt: 1,
    reason: 'status 503',
    waitMs: 5,
    msg: 'retrying GET /stock in 5 ms after status 503 (attempt 1)'
  })
})

test("in a Fastify app, the client's log lines go through the app's logger", async (t) => {
  const lines: LogLine[] = []
  const stream = { write (line: string) { lines.push(JSON.parse(line) as LogLine) } }
  const upstream = await upstreamFor(t, failing(503, 1))
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    clients: { users: { baseUrl: upstream.url, retry: QUICK }, orders: { baseUrl: upstream.url } }
  })
  app.get('/me', async (request) => {
    const res = await request.server.httpClients.users.get('/me')
    return { status: res.statusCode, attempts: res.attempts }
  })
  const reply = await app.inject({ url: '/me' })
  t.same(reply.json(), { status: 200, attempts: 2 })
  const retries = lines.filter((line) => typeof line.msg === 'string' && line.msg.startsWith('retrying'))
  t.equal(retries.length, 1)
  t.match(retries[0], { client: 'users', path: '/me', waitMs: 5, pid: process.pid })
  t.notOk(lines.some((line) => line.client === 'orders'), 'the other client said nothing')
})
