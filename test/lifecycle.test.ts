import diagnosticsChannel from 'node:diagnostics_channel'
import path from 'node:path'
import Fastify from 'fastify'
import { test } from 'tap'
import { Agent, MockAgent, request as undiciRequest } from 'undici'
import resilientHttp, { CHANNELS, ClientClosedError, createHttpClient, type RetryEvent } from '../plugin'
import { runChildThatMustExit } from './helpers/child-process'
import './helpers/fastify-types'
import { sendJson, startUpstream, rejection } from './helpers/upstream'
import { eventually } from './helpers/wait'

// Wall-clock bounds are deliberately loose: the machine running the suite may be busy.
const SLACK_MS = 3000

/** Resolves on the first retry the named client schedules (its wait has begun by then). */
function nextRetryOf (clientName: string): Promise<RetryEvent> {
  return new Promise((resolve) => {
    const listener = (message: unknown): void => {
      const event = message as RetryEvent
      if (event.client !== clientName) return
      diagnosticsChannel.unsubscribe(CHANNELS.retry, listener)
      resolve(event)
    }
    diagnosticsChannel.subscribe(CHANNELS.retry, listener)
  })
}

/** The answers the lifecycle scenarios need, by path. */
async function scriptedUpstream () {
  return startUpstream((_req, res, hit) => {
    switch (hit.url) {
      case '/ok':
        sendJson(res, 200, { ok: true, requestId: hit.headers['x-request-id'] ?? null })
        return
      case '/slow':
        setTimeout(() => sendJson(res, 200, { slow: true }), 200)
        return
      case '/unavailable':
        sendJson(res, 503, { error: 'unavailable' })
        return
      case '/hang':
        return
      default:
        sendJson(res, 404, { error: 'not found' })
    }
  })
}

test('calls made after fastify.close() reject with ClientClosedError and send nothing', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const app = Fastify()
  await app.register(resilientHttp, { clients: { api: { baseUrl: upstream.url } } })
  await app.ready()
  const client = app.httpClients.api
  t.equal((await client.get('/ok')).statusCode, 200)

  await app.close()

  for (const call of [() => client.get('/ok'), () => client.post('/ok', { json: {} }), () => client.request({ method: 'PUT', path: '/ok' })]) {
    const error = await rejection(call())
    t.ok(error instanceof ClientClosedError)
    t.equal((error as ClientClosedError).code, 'FRH_CLIENT_CLOSED')
    t.equal((error as ClientClosedError).clientName, 'api')
    t.equal((error as ClientClosedError).path, '/ok')
  }
  t.equal(upstream.hits.length, 1, 'only the call before close reached the upstream')
  t.equal(client.stats().inFlight, 0)
})

test('client.close() refuses new calls and is idempotent', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'solo', baseUrl: upstream.url })

  const first = client.close()
  t.equal(client.close(), first, 'a second close() returns the same promise')
  await first
  const error = await rejection(client.get('/ok'))
  t.ok(error instanceof ClientClosedError)
  t.equal((error as ClientClosedError).method, 'GET')
  t.equal(upstream.hits.length, 0)
})

test('a call in flight when close starts finishes with its response', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const app = Fastify()
  await app.register(resilientHttp, { clients: { api: { baseUrl: upstream.url } } })
  await app.ready()
  const client = app.httpClients.api

  const order: string[] = []
  const inFlight = client.get('/slow').then((res) => {
    order.push('response')
    return res
  })
  t.ok(await eventually(() => upstream.hits.length === 1, SLACK_MS), 'the call reached the upstream')
  const closing = app.close().then(() => { order.push('closed') })

  const res = await inFlight
  t.equal(res.statusCode, 200)
  t.same(await res.json(), { slow: true }, 'the body is whole')
  await closing
  t.same(order, ['response', 'closed'], 'close waited for the call in flight')
  t.equal(upstream.hits.length, 1)
  const stats = client.stats()
  t.equal(stats.inFlight, 0)
  t.equal(stats.successes, 1)
})

test('client.close() refuses calls at once while a call in flight finishes', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'solo', baseUrl: upstream.url })

  const inFlight = client.get('/slow')
  t.ok(await eventually(() => upstream.hits.length === 1, SLACK_MS), 'the call reached the upstream')
  const closing = client.close()
  const refused = await rejection(client.get('/ok'))
  t.ok(refused instanceof ClientClosedError, 'a call made while closing is refused')
  t.equal(client.stats().inFlight, 1, 'the first call is still under way')

  const res = await inFlight
  t.same(await res.json(), { slow: true })
  await closing
  t.equal(upstream.hits.length, 1)
})

test('close cuts a wait between retries with ClientClosedError', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const app = Fastify()
  await app.register(resilientHttp, {
    clients: { waiter: { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 5000, backoffMaxMs: 5000, jitter: 'none' } } }
  })
  await app.ready()
  const client = app.httpClients.waiter

  const retried = nextRetryOf('waiter')
  const call = rejection(client.get('/unavailable'))
  const event = await retried
  t.equal(event.waitMs, 5000, 'the call is waiting 5 s before its retry')

  const started = Date.now()
  await app.close()
  const closeMs = Date.now() - started
  const error = await call
  const elapsed = Date.now() - started

  t.ok(error instanceof ClientClosedError, 'the wait is cut')
  t.equal((error as ClientClosedError).code, 'FRH_CLIENT_CLOSED')
  t.equal((error as ClientClosedError).attempts, 1)
  t.ok(closeMs < SLACK_MS, `close resolved after ${closeMs} ms, not after the wait`)
  t.ok(elapsed < SLACK_MS, `the call ended ${elapsed} ms after close began`)
  t.equal(upstream.hits.length, 1, 'no retry was sent')
  t.equal(client.stats().retries, 0)
  t.equal(client.stats().inFlight, 0)
})

test('after the grace period a call that never gets an answer is destroyed', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const app = Fastify()
  // The grace period is the client's `timeout`; the call itself allows far longer.
  await app.register(resilientHttp, { defaults: { timeout: 300 }, clients: { api: { baseUrl: upstream.url, retry: false } } })
  await app.ready()
  const client = app.httpClients.api

  const call = rejection(client.get('/hang', { timeout: 30_000, totalTimeout: 30_000 }))
  t.ok(await eventually(() => upstream.hits.length === 1, SLACK_MS), 'the call reached the upstream')
  const started = Date.now()
  await app.close()
  const closeMs = Date.now() - started
  const error = await call

  t.ok(error instanceof ClientClosedError, 'the call is destroyed with ClientClosedError')
  t.equal((error as ClientClosedError).code, 'FRH_CLIENT_CLOSED')
  t.equal((error as ClientClosedError).path, '/hang')
  t.ok(closeMs >= 250 && closeMs <= 300 + SLACK_MS, `close resolved after ${closeMs} ms, about the 300 ms grace`)
  t.equal(client.stats().inFlight, 0)
  t.equal(client.stats().pool?.connected, 0, 'the pool holds no socket')
})

test('a given undici Agent is not closed by client.close(), and its stuck calls are still cut', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  const agent = new Agent()
  t.teardown(() => agent.close())
  const client = createHttpClient({ name: 'shared', baseUrl: upstream.url, dispatcher: agent, timeout: 300, retry: false })

  t.equal((await client.get('/ok')).statusCode, 200)
  const call = rejection(client.get('/hang', { timeout: 30_000, totalTimeout: 30_000 }))
  t.ok(await eventually(() => upstream.hits.length === 2, SLACK_MS))
  const started = Date.now()
  await client.close()
  const closeMs = Date.now() - started
  const error = await call

  t.ok(error instanceof ClientClosedError, 'the stuck call is cut after the grace period')
  t.ok(closeMs >= 250 && closeMs <= 300 + SLACK_MS, `close resolved after ${closeMs} ms`)
  t.equal(agent.closed, false, 'the agent is not closed')
  t.equal(agent.destroyed, false, 'the agent is not destroyed')
  const direct = await undiciRequest(`${upstream.url}/ok`, { dispatcher: agent })
  t.equal(direct.statusCode, 200, 'the agent still serves its owner')
  await direct.body.dump()
})

test('a given MockAgent is not closed by client.close()', async (t) => {
  const mockAgent = new MockAgent()
  mockAgent.disableNetConnect()
  let closes = 0
  const close = mockAgent.close.bind(mockAgent)
  mockAgent.close = (() => {
    closes++
    return close()
  }) as typeof mockAgent.close
  t.teardown(() => close())
  const origin = 'http://127.0.0.1:9'
  mockAgent.get(origin).intercept({ path: '/v1/users/1', method: 'GET' }).reply(200, { id: 1 })

  const app = Fastify()
  await app.register(resilientHttp, { clients: { users: { baseUrl: `${origin}/v1`, dispatcher: mockAgent } } })
  await app.ready()
  const res = await app.httpClients.users.get('/users/1')
  t.same(await res.json(), { id: 1 })

  await app.close()
  t.equal(closes, 0, 'the client never called close() on the MockAgent')
  mockAgent.get(origin).intercept({ path: '/after', method: 'GET' }).reply(200, 'still here')
  const after = await undiciRequest(`${origin}/after`, { dispatcher: mockAgent })
  t.equal(await after.body.text(), 'still here', 'the MockAgent still answers')
})

test('a process that used the plugin exits by itself after fastify.close()', async (t) => {
  const upstream = await scriptedUpstream()
  t.teardown(() => upstream.close())
  // The upstream keeps idle sockets open too: a socket the child leaks keeps it alive.
  upstream.server.keepAliveTimeout = 60_000
  const fixture = path.join(__dirname, 'fixtures', 'exit-by-itself.js')
  const { code, signal, killed, stdout, stderr, exitAfterSummaryMs: exitLag } = await runChildThatMustExit(t, [fixture], { env: { UPSTREAM_URL: upstream.url } })

  t.equal(killed, false, `the child exited by itself, ${exitLag} ms after closing`)
  t.equal(signal, null)
  t.equal(code, 0, `exit code 0; stderr: ${stderr}`)
  const lastLine = stdout.trim().split('\n').pop() ?? ''
  const summary = lastLine === '' ? {} : JSON.parse(lastLine)
  t.same(summary.proxied, { ok: true, requestId: 'child-req-1' }, 'a route called the upstream with the request id')
  t.same(summary.timedOut, { code: 'FRH_TIMEOUT', kind: 'attempt' })
  t.equal(summary.waitingOnRetry, 'FRH_CLIENT_CLOSED')
  t.same(summary.inFlight, { statusCode: 200, body: { slow: true } })
  t.equal(summary.stuck, 'FRH_CLIENT_CLOSED')
  t.equal(summary.afterClose, 'FRH_CLIENT_CLOSED')
  // Bounded far below the stuck call's own 60 s timeout: the grace period ended it.
  t.ok(summary.closeMs < 10_000, `fastify.close() took ${summary.closeMs} ms`)
  const count = (url: string): number => upstream.hits.filter((hit) => hit.url === url).length
  t.equal(count('/ok'), 1, 'the call after close sent nothing')
  t.equal(count('/unavailable'), 1, 'the retry cut by close was never sent')
  t.equal(count('/slow'), 1)
  t.ok(count('/hang') <= 2, 'the hanging calls were not retried')
  t.equal(upstream.hits.length, 3 + count('/hang'))
})
