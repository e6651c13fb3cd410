import type { Socket } from 'node:net'
import Fastify from 'fastify'
import { test, type Test } from 'tap'
import resilientHttp, { CircuitOpenError, currentRequestId, type HttpClient, TimeoutError } from '../plugin'
import './helpers/fastify-types'
import { clientFor, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'

// Every bound ends a call on time in every phase of an attempt. Wall-clock
// bounds are loose (a busy machine), but far below the 2-3 s the held
// requests and undici's own timers would take.
const HELD_MS = 3_000
const LATE_MS = 1_500

/** An upstream that holds `/hold` for HELD_MS and answers anything else at once. */
async function holdingUpstream (t: Test): Promise<Upstream> {
  const upstream = await startUpstream((req, res) => {
    if (req.url?.startsWith('/hold') === true) {
      const timer = setTimeout(() => sendJson(res, 200, { held: true }), HELD_MS)
      res.on('close', () => clearTimeout(timer))
      return
    }
    sendJson(res, 200, { ok: true })
  })
  t.teardown(() => upstream.close())
  return upstream
}

function boundedClient (t: Test, upstream: Upstream, options: Record<string, unknown> = {}): HttpClient {
  return clientFor(t, { name: 'bounded', baseUrl: upstream.url, retry: false, circuitBreaker: false, ...options })
}

async function elapsedOf (promise: Promise<unknown>): Promise<{ error: unknown, ms: number }> {
  const started = performance.now()
  const error = await rejection(promise)
  return { error, ms: performance.now() - started }
}

test('waiting for a connection: timeout, totalTimeout and the caller\'s signal end the call on time', async (t) => {
  const upstream = await holdingUpstream(t)
  const client = boundedClient(t, upstream, { pool: { connections: 1 } })
  const held = client.get('/hold')
  while (upstream.hits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))

  const attempt = await elapsedOf(client.get('/queued', { timeout: 200 }))
  t.ok(attempt.error instanceof TimeoutError && attempt.error.kind === 'attempt', 'timeout: TimeoutError attempt')
  t.ok(attempt.ms >= 190 && attempt.ms < LATE_MS, `timeout ended the call after ${Math.round(attempt.ms)} ms`)

  const total = await elapsedOf(client.get('/queued', { totalTimeout: 200 }))
  t.ok(total.error instanceof TimeoutError && total.error.kind === 'total', 'totalTimeout: TimeoutError total')
  t.ok(total.ms >= 190 && total.ms < LATE_MS, `totalTimeout ended the call after ${Math.round(total.ms)} ms`)

  const signal = AbortSignal.timeout(200)
  const aborted = await elapsedOf(client.get('/queued', { signal }))
  t.equal(aborted.error, signal.reason, 'the signal: rejects with its reason')
  t.ok(aborted.ms >= 150 && aborted.ms < LATE_MS, `the signal ended the call after ${Math.round(aborted.ms)} ms`)

  t.equal(upstream.hits.length, 1, 'nothing that timed out in the queue was sent')
  await rejection(client.close())
  await rejection(held)
})

test('the 129th of 129 slow calls on the default pool times out on time', async (t) => {
  const upstream = await holdingUpstream(t)
  const client = boundedClient(t, upstream)
  const slow = Array.from({ length: 128 }, (_, i) => rejection(client.get(`/hold/${i}`)))
  const last = await elapsedOf(client.get('/hold/last', { timeout: 200 }))
  t.ok(last.error instanceof TimeoutError, 'TimeoutError')
  t.ok(last.ms < LATE_MS, `the 129th call ended after ${Math.round(last.ms)} ms`)
  await client.close()
  await Promise.all(slow)
})

test('a connect that never completes is bounded by the attempt timeout, not undici\'s 10 s', async (t) => {
  const upstream = await holdingUpstream(t)
  let connects = 0
  // A connector that never calls back: a SYN the network drops.
  const hanging = (): void => { connects++ }
  const client = boundedClient(t, upstream, { pool: { connect: hanging } })
  const { error, ms } = await elapsedOf(client.get('/x', { timeout: 300 }))
  t.ok(error instanceof TimeoutError, 'TimeoutError')
  t.ok(ms >= 290 && ms < LATE_MS, `ended after ${Math.round(ms)} ms`)
  t.equal(connects, 1)
  t.equal(upstream.hits.length, 0)
})

test('a 503 whose body is cut is one failure for the breaker, not two', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain', 'content-length': 100 })
    res.write('0123456789')
    setTimeout(() => res.socket?.destroy(), 20)
  })
  t.teardown(() => upstream.close())
  const client = boundedClient(t, upstream, { circuitBreaker: { failureThreshold: 2, recoveryMs: 60_000 } })
  await rejection(client.get('/cut'))
  t.equal(client.stats().circuit, 'closed', 'one attempt, one failure: below the threshold of 2')
  await rejection(client.get('/cut'))
  t.equal(client.stats().circuit, 'open', 'the second attempt makes two')
})

test('the system clock stepping back does not stretch a timeout or an open circuit', async (t) => {
  const upstream = await holdingUpstream(t)
  const client = boundedClient(t, upstream, { circuitBreaker: { failureThreshold: 1, recoveryMs: 1_000 } })
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  const call = elapsedOf(client.get('/hold', { timeout: 300 }))
  Date.now = () => realNow() - 3_600_000
  const { error, ms } = await call
  t.ok(error instanceof TimeoutError, 'the timeout fired')
  t.ok(ms < LATE_MS, `after ${Math.round(ms)} ms`)
  const refused = await rejection(client.get('/x'))
  t.ok(refused instanceof CircuitOpenError, 'the timeout opened the circuit')
  t.ok((refused as CircuitOpenError).remainingMs <= 1_000, `half-opens in ${(refused as CircuitOpenError).remainingMs} ms`)
})

test('a body cut by its own timeout is reported in no other request\'s async context', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 })
    res.write('{"partial":')
  })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  // Long enough for 21 connects and their headers on a busy machine: only the body may be cut.
  await app.register(resilientHttp, { clients: { stalls: { baseUrl: upstream.url, timeout: 500, retry: false } } })
  const seen: Array<[own: string, inCallback: string | undefined]> = []
  app.get('/r', async (request) => {
    const res = await request.server.httpClients.stalls.get('/body')
    const own = request.id
    await new Promise<void>((resolve) => {
      res.body.on('error', () => {
        seen.push([own, currentRequestId()])
        resolve()
      })
      res.body.resume()
    })
    return { own, now: currentRequestId() }
  })
  const replies = await Promise.all(Array.from({ length: 21 }, (_, i) => app.inject({ url: '/r', headers: { 'x-request-id': `req-${i}` } })))
  for (const reply of replies) {
    t.equal(reply.statusCode, 200, 'the headers came before the timeout')
    const { own, now } = reply.json<{ own: string, now: string }>()
    t.equal(now, own, 'after the await, the handler is in its own context')
  }
  t.equal(seen.length, 21)
  const strangers = seen.filter(([own, inCallback]) => inCallback !== undefined && inCallback !== own)
  t.same(strangers, [], 'no body error listener ran in another request\'s context')
})

test('sockets are left idle after the bounds fire', async (t) => {
  const upstream = await holdingUpstream(t)
  const sockets: Socket[] = []
  upstream.server.on('connection', (socket: Socket) => { sockets.push(socket) })
  const client = boundedClient(t, upstream, { pool: { connections: 2 } })
  await rejection(client.get('/hold', { timeout: 100 }))
  for (let i = 0; i < 100 && (client.stats().pool?.running ?? 0) > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(client.stats().pool?.running, 0, 'the timed-out attempt does not keep its socket busy')
  t.same(await (await client.get('/ok')).json(), { ok: true }, 'the client still works')
})

test('the client\'s own timer bounds an attempt; undici\'s header and body timers run only when set in pool', async (t) => {
  const upstream = await holdingUpstream(t)

  const ours = await elapsedOf(boundedClient(t, upstream).get('/hold', { timeout: 200 }))
  t.ok(ours.error instanceof TimeoutError && ours.error.kind === 'attempt', 'by default, the attempt timeout ends it')

  const undiciTimed = boundedClient(t, upstream, { pool: { headersTimeout: 100 } })
  const theirs = await elapsedOf(undiciTimed.get('/hold', { timeout: 2_500 }))
  const cause = (theirs.error as { cause?: { code?: string } }).cause
  t.equal(cause?.code, 'UND_ERR_HEADERS_TIMEOUT', 'pool.headersTimeout set: undici\'s timer fires first')
  t.ok(theirs.ms < LATE_MS, `after ${Math.round(theirs.ms)} ms`)
})
