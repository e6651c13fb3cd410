import diagnosticsChannel from 'node:diagnostics_channel'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import resilientHttp, {
  CHANNELS, currentDeadline, requestIdGenerator, type RetrySkippedEvent, TimeoutError
} from '../plugin'
import type { PluginOptions } from '../lib/types'
import { runChildThatMustExit } from './helpers/child-process'
import './helpers/fastify-types'
import { type Handler, sendJson, rejection, upstreamFor } from './helpers/upstream'

const HEADER = 'x-request-timeout-ms'
// Wall-clock bounds are deliberately loose: the machine running the suite may be busy.
const SLACK_MS = 1_500

const answerOk: Handler = (_req, res) => { sendJson(res, 200, { ok: true }) }

/** A Fastify app with the plugin, its routes added by `routes`, listening on 127.0.0.1 port 0 when `listen`. */
async function appWith (t: Test, options: PluginOptions, routes: (app: FastifyInstance) => void, listen = false): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(resilientHttp, options)
  routes(app)
  if (!listen) {
    await app.ready()
    return { app, url: '' }
  }
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

function forwarded (hit: { headers: Record<string, string | string[] | undefined> }): number | undefined {
  const value = hit.headers[HEADER]
  return typeof value === 'string' ? Number(value) : undefined
}

/** What a route answers about a call that failed. */
function describeError (error: unknown): Record<string, unknown> {
  const e = error as TimeoutError
  return { name: e.name, kind: e.kind, attempts: e.attempts, statusCode: e.statusCode }
}

test('the budget is forwarded across two hops, each hop sending less than it was given', async (t) => {
  const payments = await upstreamFor(t, answerOk)
  const orders = await appWith(t, { deadline: true, clients: { payments: { baseUrl: payments.url } } }, (app) => {
    app.get('/orders', async (request) => {
      await sleep(100)
      const response = await app.httpClients.payments.get('/pay')
      await response.text()
      return { received: Number(request.headers[HEADER]), id: request.id }
    })
  }, true)
  const gateway = await appWith(t, { deadline: true, clients: { orders: { baseUrl: orders.url } } }, (app) => {
    app.get('/checkout', async () => {
      await sleep(50)
      const response = await app.httpClients.orders.get('/orders')
      return response.json()
    })
  })
  const reply = await gateway.app.inject({ url: '/checkout', headers: { [HEADER]: '2000', 'x-request-id': 'chk-1' } })
  t.equal(reply.statusCode, 200)
  const { received, id } = reply.json<{ received: number, id: string }>()
  t.equal(id, 'chk-1', 'the request id went along')
  t.ok(received > 0 && received <= 1950, `orders was given what was left of 2000 ms after 50 ms: ${received}`)
  const second = forwarded(payments.hits[0]) as number
  t.ok(second > 0 && second <= received - 90, `payments was given less again, after 100 ms more: ${second} < ${received}`)
  t.equal(payments.hits[0].headers['x-request-id'], 'chk-1')
})

test('a route\'s config.deadlineMs works without the header, and the smaller of route and header wins', async (t) => {
  const upstream = await upstreamFor(t, answerOk)
  const { app } = await appWith(t, { deadline: true, clients: { up: { baseUrl: upstream.url } } }, (app) => {
    const handler = async (): Promise<string> => {
      const response = await app.httpClients.up.get('/x')
      await response.text()
      return 'ok'
    }
    app.get('/route1500', { config: { deadlineMs: 1_500 } }, handler)
    app.get('/route1000', { config: { deadlineMs: 1_000 } }, handler)
    app.get('/route5000', { config: { deadlineMs: 5_000 } }, handler)
    app.get('/free', handler)
  })
  const sent = async (url: string, headers: Record<string, string> = {}): Promise<number | undefined> => {
    const before = upstream.hits.length
    const reply = await app.inject({ url, headers })
    t.equal(reply.statusCode, 200, url)
    return forwarded(upstream.hits[before])
  }
  const routeOnly = await sent('/route1500') as number
  t.ok(routeOnly <= 1_500 && routeOnly > 1_500 - SLACK_MS, `route alone: ${routeOnly}`)
  const routeSmaller = await sent('/route1000', { [HEADER]: '5000' }) as number
  t.ok(routeSmaller <= 1_000 && routeSmaller > 1_000 - SLACK_MS, `route 1000 under header 5000: ${routeSmaller}`)
  const headerSmaller = await sent('/route5000', { [HEADER]: '800' }) as number
  t.ok(headerSmaller <= 800 && headerSmaller > 0, `header 800 under route 5000: ${headerSmaller}`)
  t.equal(await sent('/free'), undefined, 'no deadline at all: no header forwarded')
})

test('a call that sets the deadline header itself sends its own value, and is still cut by the deadline', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 200, {}), 600).unref() })
  const { app } = await appWith(t, { deadline: true, clients: { up: { baseUrl: upstream.url } } }, (app) => {
    app.get('/own', async () => {
      const error = await rejection(app.httpClients.up.get('/x', { headers: { 'X-Request-Timeout-Ms': '60000' } }))
      return describeError(error)
    })
  })
  const reply = await app.inject({ url: '/own', headers: { [HEADER]: '200' } })
  t.match(reply.json(), { name: 'TimeoutError', kind: 'deadline' })
  t.equal(upstream.hits[0].headers[HEADER], '60000', 'the call\'s own header is sent as it is, once')
})

test('a route deadline cuts calls without the deadline option, and nothing is forwarded', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 200, {}), 2_000).unref() })
  const { app } = await appWith(t, { clients: { up: { baseUrl: upstream.url } } }, (app) => {
    app.get('/r', { config: { deadlineMs: 300 } }, async () => app.httpClients.up.get('/slow'))
  })
  const started = performance.now()
  const reply = await app.inject({ url: '/r', headers: { [HEADER]: '5000' } })
  const elapsed = performance.now() - started
  t.equal(reply.statusCode, 504, 'the TimeoutError thrown from the route is answered as 504')
  t.ok(elapsed >= 280 && elapsed < 300 + SLACK_MS, `cut at the route's deadline: ${Math.round(elapsed)} ms`)
  t.equal(forwarded(upstream.hits[0]), undefined, 'without the option nothing is forwarded')
})

test('a Retry-After longer than the time left is not waited: the call ends at once with the 503', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { sendJson(res, 503, { down: true }, { 'retry-after': '2' }) })
  const skipped: RetrySkippedEvent[] = []
  const listener = (message: unknown): void => { skipped.push(message as RetrySkippedEvent) }
  diagnosticsChannel.subscribe(CHANNELS.retrySkipped, listener)
  t.teardown(() => { diagnosticsChannel.unsubscribe(CHANNELS.retrySkipped, listener) })
  const { app } = await appWith(t, { deadline: true, clients: { busy: { baseUrl: upstream.url, retry: { maxAttempts: 3, budget: false } } } }, (app) => {
    app.get('/r', async () => {
      const started = performance.now()
      const response = await app.httpClients.busy.get('/x')
      await response.text()
      return { status: response.statusCode, attempts: response.attempts, elapsed: performance.now() - started }
    })
  })
  const reply = await app.inject({ url: '/r', headers: { [HEADER]: '1000' } })
  const body = reply.json<{ status: number, attempts: number, elapsed: number }>()
  t.equal(body.status, 503, 'resolved with its last failure')
  t.equal(body.attempts, 1)
  t.ok(body.elapsed < 900, `without waiting: ${Math.round(body.elapsed)} ms`)
  t.equal(upstream.hits.length, 1)
  t.match(skipped.filter((event) => event.client === 'busy'), [{ skipped: 'deadline', attempt: 1, reason: 'status 503' }])
})

test('a retry after a 300 ms wait forwards about 300 ms less than the first attempt', async (t) => {
  const upstream = await upstreamFor(t, (_req, res, _hit, index) => { sendJson(res, index === 0 ? 503 : 200, {}) })
  const { app } = await appWith(t, {
    deadline: true,
    clients: { up: { baseUrl: upstream.url, retry: { backoffInitialMs: 300, jitter: 'none', budget: false } } }
  }, (app) => {
    app.get('/r', async () => {
      const response = await app.httpClients.up.get('/x')
      await response.text()
      return { status: response.statusCode, attempts: response.attempts }
    })
  })
  const reply = await app.inject({ url: '/r', headers: { [HEADER]: '5000' } })
  t.same(reply.json(), { status: 200, attempts: 2 })
  const first = forwarded(upstream.hits[0]) as number
  const second = forwarded(upstream.hits[1]) as number
  t.ok(first <= 5_000 && first > 5_000 - SLACK_MS, `first attempt: ${first}`)
  t.ok(first - second >= 295 && first - second < 300 + SLACK_MS, `the retry carries what is left after the wait: ${first} then ${second}`)
})

test('deadline: false ignores the inbound deadline: no header, no cut; outside a request nothing changes', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 200, { late: true }), 400) })
  const { app } = await appWith(t, { deadline: true, clients: { up: { baseUrl: upstream.url } } }, (app) => {
    app.get('/background', async () => {
      const response = await app.httpClients.up.get('/job', { deadline: false })
      return { status: response.statusCode, left: currentDeadline() }
    })
    app.get('/bounded', async () => {
      try {
        await app.httpClients.up.get('/job')
        return { error: null }
      } catch (error) {
        return { error: describeError(error) }
      }
    })
  })
  const background = await app.inject({ url: '/background', headers: { [HEADER]: '150' } })
  t.match(background.json(), { status: 200, left: 0 }, 'the call outlived the request\'s 150 ms')
  t.equal(forwarded(upstream.hits[0]), undefined, 'and carried no deadline header')

  const bounded = await app.inject({ url: '/bounded', headers: { [HEADER]: '150' } })
  t.same(bounded.json(), { error: { name: 'TimeoutError', kind: 'deadline', attempts: 1, statusCode: 504 } }, 'the same call without deadline: false is cut')
  t.ok(forwarded(upstream.hits[1]) as number <= 150)

  t.equal(currentDeadline(), undefined, 'outside a request there is no deadline')
  const outside = await app.httpClients.up.get('/job')
  t.equal(outside.statusCode, 200, 'a call outside a request keeps its own timeouts')
  t.equal(forwarded(upstream.hits[2]), undefined)
  t.equal(upstream.hits[2].headers['x-request-id'], undefined)
})

test('a call made when no time is left rejects at once: nothing sent, neither breaker nor budget counts it', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { sendJson(res, 503, {}) })
  const deadlineEvents: unknown[] = []
  const listener = (message: unknown): void => { deadlineEvents.push(message) }
  diagnosticsChannel.subscribe(CHANNELS.deadlineExceeded, listener)
  t.teardown(() => { diagnosticsChannel.unsubscribe(CHANNELS.deadlineExceeded, listener) })
  const { app } = await appWith(t, {
    deadline: true,
    clients: {
      // One counted failure would open this circuit.
      fragile: { baseUrl: upstream.url, circuitBreaker: { failureThreshold: 1 }, retry: false },
      // A budget of half the calls and no floor: what it has counted shows in the retries it allows.
      budgeted: { baseUrl: upstream.url, circuitBreaker: false, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: { ratio: 0.5, minPerSecond: 0 } } }
    }
  }, (app) => {
    app.get('/late', { config: { deadlineMs: 30 } }, async () => {
      await sleep(80)
      const errors = []
      for (const name of ['fragile', 'budgeted']) {
        for (let i = 0; i < 10; i++) {
          const started = performance.now()
          const error = await rejection(app.httpClients[name].get('/x'))
          errors.push({ ...describeError(error), instant: performance.now() - started < 50 })
        }
      }
      return errors
    })
  })
  const reply = await app.inject({ url: '/late' })
  const errors = reply.json<Array<Record<string, unknown>>>()
  t.equal(errors.length, 20)
  t.ok(errors.every((error) => error.name === 'TimeoutError' && error.kind === 'deadline' && error.attempts === 0 && error.instant === true), 'each rejects at once with kind deadline after 0 attempts')
  t.equal(upstream.hits.length, 0, 'nothing was sent')
  t.equal(deadlineEvents.length, 20, 'each is published as deadline-exceeded')
  const fragile = app.httpClients.fragile
  t.equal(fragile.stats().circuit, 'closed', 'the breaker did not count them')
  t.match(fragile.stats(), { requests: 10, failures: 10, retries: 0 })

  // One real failing call: with only itself counted, the budget allows one retry (0 < 0.5) and refuses the next (1 >= 0.5).
  const response = await app.httpClients.budgeted.get('/x')
  t.equal(response.statusCode, 503)
  t.equal(response.attempts, 2, 'the budget had not counted the refused calls')
  t.equal(app.httpClients.budgeted.stats().retriesDenied, 1)
})

test('a call cut later by the deadline rejects with kind deadline; thrown from a route it is a 504', async (t) => {
  const upstream = await upstreamFor(t, () => { /* never answers */ })
  const { app } = await appWith(t, { deadline: true, clients: { up: { baseUrl: upstream.url, timeout: 5_000, retry: { backoffInitialMs: 1 } } } }, (app) => {
    app.get('/caught', async () => {
      const started = performance.now()
      const error = await rejection(app.httpClients.up.get('/hang'))
      return { ...describeError(error), elapsed: performance.now() - started }
    })
    app.get('/thrown', async () => app.httpClients.up.get('/hang'))
  })
  const caught = await app.inject({ url: '/caught', headers: { [HEADER]: '300' } })
  const body = caught.json<Record<string, number | string>>()
  t.match(body, { name: 'TimeoutError', kind: 'deadline', attempts: 1, statusCode: 504 })
  t.ok((body.elapsed as number) >= 280 && (body.elapsed as number) < 300 + SLACK_MS, `cut at the deadline: ${Math.round(body.elapsed as number)} ms`)
  const thrown = await app.inject({ url: '/thrown', headers: { [HEADER]: '200' } })
  t.equal(thrown.statusCode, 504)
  t.equal(app.httpClients.up.stats().circuit, 'closed')
  t.equal(upstream.hits.length, 2, 'one attempt each: a deadline cut is not retried')
})

test('300 concurrent inbound requests with their own budgets: each upstream call carries its own figure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    setTimeout(() => sendJson(res, 200, {}), Math.floor(Math.random() * 20))
  })
  const { url } = await appWith(t, { deadline: true, clients: { up: { baseUrl: upstream.url } } }, (app) => {
    app.get('/fan', async () => {
      // Two calls after awaits of different lengths: the contexts of the requests interleave.
      await sleep(Math.floor(Math.random() * 20))
      for (let i = 0; i < 2; i++) {
        const response = await app.httpClients.up.get('/echo')
        await response.text()
      }
      return 'ok'
    })
  }, true)
  const agent = new Agent({ connections: 100 })
  t.teardown(() => agent.close())
  const count = 300
  // Budgets 5 s apart: a figure forwarded for one request cannot pass for another's.
  const budgetOf = (i: number): number => 10_000 + i * 5_000
  const statuses = await Promise.all(Array.from({ length: count }, async (_, i) => {
    const response = await undiciRequest(`${url}/fan`, { dispatcher: agent, headers: { [HEADER]: String(budgetOf(i)), 'x-request-id': `fan-${i}` } })
    await response.body.text()
    return response.statusCode
  }))
  t.ok(statuses.every((status) => status === 200))
  t.equal(upstream.hits.length, 2 * count)
  const wrong: string[] = []
  for (const hit of upstream.hits) {
    const i = Number(String(hit.headers['x-request-id']).slice(4))
    const sent = forwarded(hit) as number
    if (!(sent <= budgetOf(i) && sent > budgetOf(i) - 2_500)) wrong.push(`fan-${i}: ${sent}`)
  }
  t.same(wrong, [], 'every call carried its own request\'s budget, less what had passed')
})

// The child loads the built package (dist/) and the real Fastify; run `npm run build` first.
const MEMORY_SCRIPT = String.raw`
const http = require('node:http')
const Fastify = require('fastify')
const resilientHttp = require('./dist/plugin.js')
async function main () {
  const upstream = http.createServer((req, res) => { req.resume(); res.end('ok') })
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  const app = Fastify()
  await app.register(resilientHttp, { deadline: true, clients: { up: { baseUrl: 'http://127.0.0.1:' + upstream.address().port, retry: false } } })
  app.get('/r', async () => { const res = await app.httpClients.up.get('/x'); await res.text(); return 'ok' })
  await app.ready()
  const client = app.httpClients.up
  let n = 0
  // Every call has its own figures: inbound budgets through Fastify, or per-call timeouts.
  async function one () {
    const i = n++
    if (i % 2 === 0) {
      const reply = await app.inject({ url: '/r', headers: { 'x-request-timeout-ms': String(20000 + i) } })
      if (reply.statusCode !== 200) throw new Error('inbound ' + reply.statusCode)
    } else {
      const res = await client.get('/x', { timeout: 5000 + i, totalTimeout: 100000 + i })
      await res.text()
    }
  }
  async function run (count) {
    const end = n + count
    await Promise.all(Array.from({ length: 64 }, async () => { while (n < end) await one() }))
  }
  function heap () { for (let i = 0; i < 4; i++) global.gc(); return process.memoryUsage().heapUsed }
  await run(5000)
  const before = heap()
  await run(50000)
  const after = heap()
  const stats = client.stats()
  await app.close()
  upstream.close()
  console.log(JSON.stringify({ before, after, calls: n, requests: stats.requests, inFlight: stats.inFlight }))
}
main().catch((error) => { console.error(error); process.exit(1) })
`

test('memory stays flat across 50,000 calls with distinct deadlines and timeouts', async (t) => {
  const result = await runChildThatMustExit(t, ['--expose-gc', '-e', MEMORY_SCRIPT], { cwd: process.cwd(), exitWithinMs: 10_000 })
  t.equal(result.code, 0, result.stderr)
  t.equal(result.killed, false, 'the child exited by itself: no timer or socket left')
  const figures = JSON.parse(result.stdout.trim().split('\n').at(-1) as string) as { before: number, after: number, calls: number, requests: number, inFlight: number }
  t.equal(figures.calls, 55_000)
  t.equal(figures.requests, 55_000)
  t.equal(figures.inFlight, 0)
  const growth = figures.after - figures.before
  t.ok(growth < 5 * 1024 * 1024, `heap after GC grew by ${(growth / 1024 / 1024).toFixed(2)} MB over 50,000 calls`)
})

test('a default header of the deadline\'s name gives way to the ms left; propagating it is refused', async (t) => {
  const upstream = await upstreamFor(t, answerOk)
  const { app } = await appWith(t, {
    deadline: true,
    clients: { api: { baseUrl: upstream.url, defaultHeaders: { [HEADER]: '999999' } } }
  }, (app) => {
    app.get('/r', async () => {
      await (await app.httpClients.api.get('/x')).text()
      return { ok: true }
    })
  })
  t.equal((await app.inject({ url: '/r', headers: { [HEADER]: '1000' } })).statusCode, 200)
  const sent = upstream.hits[0].headers[HEADER]
  t.ok(typeof sent === 'string' && Number(sent) <= 1000, `one value, what was left: ${String(sent)}`)

  const refused = Fastify()
  t.teardown(() => refused.close())
  const error = await rejection(refused.register(resilientHttp, { deadline: true, propagateHeaders: ['traceparent', HEADER], clients: { api: { baseUrl: upstream.url } } }).ready())
  t.match(error, { code: 'FRH_INVALID_OPTIONS', option: 'propagateHeaders.1' })
})
