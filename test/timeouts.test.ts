import { once } from 'node:events'
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp, { createHttpClient, type HttpClient, TimeoutError } from '../plugin'
import './helpers/fastify-types'
import { sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'
import { eventually } from './helpers/wait'

// Wall-clock bounds are deliberately loose: the machine running the suite may be busy.
const SLACK_MS = 2500

/** Sockets the upstream has accepted, in order. */
function trackSockets (upstream: Upstream): Socket[] {
  const opened: Socket[] = []
  upstream.server.on('connection', (socket: Socket) => { opened.push(socket) })
  return opened
}

/** Resolves when `socket` closes; fails the test when it stays open past `ms`. */
async function closedWithin (socket: Socket, ms: number): Promise<void> {
  if (socket.destroyed) return
  const timer = setTimeout(() => socket.emit('error', new Error(`socket still open after ${ms} ms`)), ms)
  try {
    await once(socket, 'close')
  } finally {
    clearTimeout(timer)
  }
}

/** An upstream that answers `/warm` and holds every other request open. */
async function silentUpstream (): Promise<Upstream> {
  return startUpstream((_req, res, hit) => {
    if (hit.url === '/warm') sendJson(res, 200, { warm: true })
  })
}

/** Requests that reached the upstream, past the warm-up. */
function callHits (upstream: Upstream): number {
  return upstream.hits.filter((hit) => hit.url !== '/warm').length
}

/** Opens the client's connection first, so that a short timeout measures the attempt rather than the connect. */
async function warmUp (client: HttpClient): Promise<void> {
  const res = await client.get('/warm', { timeout: 10_000 })
  await res.text()
}

test('timeout bounds one attempt against an upstream that never answers', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 150, retry: false })
  t.teardown(() => client.close())
  await warmUp(client)

  const started = Date.now()
  const error = await rejection(client.get('/hang'))
  const elapsed = Date.now() - started

  t.ok(error instanceof TimeoutError, 'a TimeoutError')
  const timeout = error as TimeoutError
  t.equal(timeout.code, 'FRH_TIMEOUT')
  t.equal(timeout.kind, 'attempt')
  t.equal(timeout.timeoutMs, 150)
  t.equal(timeout.attempts, 1)
  t.equal(timeout.clientName, 'slow')
  t.equal(timeout.method, 'GET')
  t.equal(timeout.path, '/hang')
  t.match(timeout.message, /attempt timeout of 150 ms/)
  t.ok(elapsed >= 120 && elapsed <= SLACK_MS, `rejected after ${elapsed} ms, close to 150`)
  t.equal(callHits(upstream), 1, 'the request reached the upstream')
  const stats = client.stats()
  t.equal(stats.failures, 1)
  t.equal(stats.inFlight, 0)
})

test('an attempt timeout is retried and the last one is reported with the attempt count', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  const client = createHttpClient({
    name: 'slow',
    baseUrl: upstream.url,
    timeout: 100,
    retry: { maxAttempts: 3, backoffInitialMs: 10, jitter: 'none' }
  })
  t.teardown(() => client.close())

  const error = await rejection(client.get('/hang'))

  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'attempt')
  t.equal((error as TimeoutError).attempts, 3)
  // Each retry opens a new connection, which a busy machine may not finish within 100 ms.
  t.ok(callHits(upstream) >= 1 && callHits(upstream) <= 3, 'no request beyond the three attempts')
  t.equal(client.stats().retries, 2)
})

test('totalTimeout fires during a later attempt and bounds the whole call', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  // Attempt 1 times out at ~500 ms; after a 10 ms wait attempt 2 has less than
  // `timeout` left, so the total deadline (900 ms) is the one that fires. Timer
  // drift up to ~390 ms leaves that order unchanged.
  const client = createHttpClient({
    name: 'slow',
    baseUrl: upstream.url,
    timeout: 500,
    totalTimeout: 900,
    retry: { maxAttempts: 5, backoffInitialMs: 10, jitter: 'none' }
  })
  t.teardown(() => client.close())

  const started = Date.now()
  const error = await rejection(client.get('/hang'))
  const elapsed = Date.now() - started

  t.ok(error instanceof TimeoutError)
  const timeout = error as TimeoutError
  t.equal(timeout.code, 'FRH_TIMEOUT')
  t.equal(timeout.kind, 'total')
  t.equal(timeout.timeoutMs, 900)
  t.equal(timeout.attempts, 2)
  t.match(timeout.message, /total timeout of 900 ms/)
  t.ok(elapsed >= 850 && elapsed <= 900 + SLACK_MS, `rejected after ${elapsed} ms, close to 900`)
  t.ok(callHits(upstream) >= 1 && callHits(upstream) <= 2, 'no request beyond the two attempts')
})

test('totalTimeout bounds many short attempts and the waits between them', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  const client = createHttpClient({
    name: 'slow',
    baseUrl: upstream.url,
    timeout: 100,
    totalTimeout: 350,
    retry: { maxAttempts: 50, backoffInitialMs: 10, backoffMaxMs: 10, jitter: 'none' }
  })
  t.teardown(() => client.close())

  const started = Date.now()
  const error = await rejection(client.get('/hang'))
  const elapsed = Date.now() - started

  // Which deadline ends the call depends on timer drift (the last attempt's own
  // timeout when no wait fits any more, else the total one); both are timeouts.
  t.ok(error instanceof TimeoutError)
  const timeout = error as TimeoutError
  t.equal(timeout.code, 'FRH_TIMEOUT')
  t.ok(timeout.attempts !== undefined && timeout.attempts >= 2, `${timeout.attempts} attempts`)
  t.ok(timeout.attempts !== undefined && timeout.attempts <= 4, 'no attempt started past the total deadline')
  t.ok(callHits(upstream) <= (timeout.attempts ?? 0), 'no request beyond the attempts counted')
  t.ok(elapsed >= 300 && elapsed <= 350 + SLACK_MS, `rejected after ${elapsed} ms, close to 350`)
})

test('a per-call totalTimeout shorter than timeout ends the first attempt', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  // A client's own timeout may not exceed its totalTimeout; a call's may.
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url })
  t.teardown(() => client.close())

  const started = Date.now()
  const error = await rejection(client.get('/hang', { timeout: 5000, totalTimeout: 200 }))
  const elapsed = Date.now() - started

  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'total')
  t.equal((error as TimeoutError).timeoutMs, 200)
  t.equal((error as TimeoutError).attempts, 1)
  t.ok(callHits(upstream) <= 1, 'no retry once the total deadline has passed')
  t.ok(elapsed >= 170 && elapsed <= 200 + SLACK_MS, `rejected after ${elapsed} ms`)
})

test('reading a body that stalls after the headers is bounded by the attempt timeout', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 })
    res.write('{"partial":')
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 200 })
  t.teardown(() => client.close())

  const started = Date.now()
  const res = await client.get('/stall')
  t.equal(res.statusCode, 200, 'the headers arrive in time')
  const error = await rejection(res.json())
  const elapsed = Date.now() - started

  t.ok(error instanceof TimeoutError, 'json() rejects with a TimeoutError')
  t.equal((error as TimeoutError).kind, 'attempt')
  t.equal((error as TimeoutError).timeoutMs, 200)
  t.ok(elapsed >= 170 && elapsed <= 200 + SLACK_MS, `body read ended after ${elapsed} ms`)
  t.equal(upstream.hits.length, 1, 'a response already handed out is not retried')
  t.equal(client.stats().inFlight, 0)
})

test('a non-2xx body that stalls is read within the attempt timeout before the call ends', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 100 })
    res.write('not fou')
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 150, retry: false })
  t.teardown(() => client.close())

  const error = await rejection(client.get('/stall'))

  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'attempt')
  t.equal(upstream.hits.length, 1)
})

test('a body that arrives in time is read whole and no timeout fires afterwards', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    const body = JSON.stringify({ ok: true })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.write(body.slice(0, 4))
    setTimeout(() => res.end(body.slice(4)), 50)
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 200 })
  t.teardown(() => client.close())

  const res = await client.get('/slow-body')
  t.same(await res.json(), { ok: true })
  // Past the attempt's deadline: nothing fires on a call that is over.
  await new Promise((resolve) => setTimeout(resolve, 300))
  const second = await client.get('/slow-body')
  t.same(await second.json(), { ok: true })
  const stats = client.stats()
  t.equal(stats.successes, 2)
  t.equal(stats.failures, 0)
  t.equal(upstream.hits.length, 2)
})

test('a timed-out attempt does not leave its socket busy', async (t) => {
  const upstream = await silentUpstream()
  t.teardown(() => upstream.close())
  const sockets = trackSockets(upstream)
  // One connection: a socket left busy would make the next call wait forever.
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 150, retry: false, pool: { connections: 1 } })
  t.teardown(() => client.close())
  await warmUp(client)
  t.equal(sockets.length, 1, 'one connection, kept alive')

  const error = await rejection(client.get('/hang'))
  t.ok(error instanceof TimeoutError)
  await closedWithin(sockets[0], 2000)
  t.ok(sockets[0].destroyed, 'the upstream saw the timed-out socket close')
  // undici settles its own counters a tick after the abort.
  const settled = await eventually(() => client.stats().pool?.running === 0 && client.stats().pool?.pending === 0, 2000)
  t.ok(settled, `no request left running or pending in the pool: ${JSON.stringify(client.stats().pool)}`)

  const res = await client.get('/warm', { timeout: 5000 })
  t.equal(res.statusCode, 200, 'the next call gets through')
  t.same(await res.json(), { warm: true })
  t.equal(upstream.hits.filter((hit) => hit.url === '/warm').length, 2)
  t.equal(client.stats().inFlight, 0)
})

test('a per-call timeout overrides the client timeout, both ways', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => {
    if (hit.url === '/hang') return
    setTimeout(() => sendJson(res, 200, { late: true }), 300)
  })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    clients: {
      patient: { baseUrl: upstream.url, timeout: 10_000, retry: false },
      hasty: { baseUrl: upstream.url, timeout: 100, retry: false }
    }
  })
  await app.ready()

  const started = Date.now()
  const error = await rejection(app.httpClients.patient.get('/hang', { timeout: 150 }))
  const elapsed = Date.now() - started
  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'attempt')
  t.equal((error as TimeoutError).timeoutMs, 150)
  t.ok(elapsed >= 120 && elapsed <= SLACK_MS, `the shorter per-call timeout fired after ${elapsed} ms`)

  const hastyError = await rejection(app.httpClients.hasty.get('/late'))
  t.ok(hastyError instanceof TimeoutError, 'the client timeout alone is too short for this upstream')
  const res = await app.httpClients.hasty.get('/late', { timeout: 3000 })
  t.equal(res.statusCode, 200, 'a longer per-call timeout lets the slow answer through')
  t.same(await res.json(), { late: true })

  const totalError = await rejection(app.httpClients.patient.get('/hang', { totalTimeout: 150 }))
  t.ok(totalError instanceof TimeoutError)
  t.equal((totalError as TimeoutError).kind, 'total', 'a per-call totalTimeout overrides too')
  t.equal((totalError as TimeoutError).timeoutMs, 150)
})
