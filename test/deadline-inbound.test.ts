import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import resilientHttp, { createHttpClient, requestIdGenerator } from '../plugin'
import { MAX_INBOUND_DEADLINE_MS, parseDeadlineHeader } from '../lib/inbound/deadline'
import type { DeadlineSettings } from '../lib/inbound/deadline'
import { currentDeadline, currentInboundContext, installRequestContext } from '../lib/inbound/request-context'
import { sendJson, startUpstream, type Upstream } from './helpers/upstream'

const HEADER = 'x-request-timeout-ms'

interface Seen {
  left: number | null
  deadlineAt: number | null
  deadlineHeader: string | null
}

function seen (): Seen {
  const context = currentInboundContext()
  return { left: currentDeadline() ?? null, deadlineAt: context?.deadlineAt ?? null, deadlineHeader: context?.deadlineHeader ?? null }
}

/**
 * An app with the inbound request context installed, reading deadlines as the
 * plugin's resolved `deadline` option says. `GET /seen` answers with what the
 * handler sees; `GET /route` does the same under `config.deadlineMs: 5_000`.
 */
async function appWith (t: Test, deadline: DeadlineSettings | false, options: FastifyServerOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({ genReqId: requestIdGenerator(), ...options })
  t.teardown(() => app.close())
  await app.register(fp(async (instance) => {
    installRequestContext(instance, { requestIdHeader: 'x-request-id', echoRequestId: true, propagateHeaders: [], deadline })
  }))
  app.get('/seen', async () => seen())
  app.get('/route', { config: { deadlineMs: 5_000 } }, async () => seen())
  return app
}

async function seenVia (app: FastifyInstance, url: string, headers: Record<string, string | string[]> = {}): Promise<Seen> {
  const reply = await app.inject({ url, headers })
  return reply.json<Seen>()
}

async function startCountingUpstream (t: Test): Promise<Upstream> {
  const upstream = await startUpstream(async (_req, res) => {
    await sleep(5)
    sendJson(res, 200, { ok: true })
  })
  t.teardown(() => upstream.close())
  return upstream
}

test('parseDeadlineHeader takes a decimal integer from 1 ms to one day, and nothing else', async (t) => {
  t.equal(parseDeadlineHeader('1'), 1)
  t.equal(parseDeadlineHeader('800'), 800)
  t.equal(parseDeadlineHeader('0800'), 800, 'leading zeros are still a decimal integer')
  t.equal(parseDeadlineHeader(String(MAX_INBOUND_DEADLINE_MS)), 86_400_000)
  for (const bad of ['', '0', '00', '-5', '+5', '1e3', '12abc', ' 5', '5 ', '1.5', '0x10', '١٢', String(MAX_INBOUND_DEADLINE_MS + 1), '9'.repeat(400), '100, 200']) {
    t.equal(parseDeadlineHeader(bad), undefined, JSON.stringify(bad.length > 20 ? `${bad.slice(0, 20)}…` : bad))
  }
  for (const bad of [undefined, null, 5, ['100'], ['100', '200']]) {
    t.equal(parseDeadlineHeader(bad), undefined, String(bad))
  }
})

test('every invalid inbound header value is ignored', async (t) => {
  const app = await appWith(t, { header: HEADER, forward: true })
  for (const bad of ['-1', '1e3', '12abc', ' 5', '0', '86400001', '', '1.5']) {
    t.same(await seenVia(app, '/seen', { [HEADER]: bad }), { left: null, deadlineAt: null, deadlineHeader: HEADER }, JSON.stringify(bad))
    const route = await seenVia(app, '/route', { [HEADER]: bad })
    t.ok(route.left !== null && route.left > 4_000 && route.left <= 5_000, `${JSON.stringify(bad)}: the route's own deadline stands (${route.left} ms)`)
  }
  // inject() hands a repeated header to Fastify as an array.
  t.same(await seenVia(app, '/seen', { [HEADER]: ['100', '200'] }), { left: null, deadlineAt: null, deadlineHeader: HEADER }, 'a repeated header')
})

test('a route\'s config.deadlineMs bounds its requests without the deadline option', async (t) => {
  const app = await appWith(t, false)
  const route = await seenVia(app, '/route', { [HEADER]: '100' })
  t.ok(route.left !== null && route.left > 4_000 && route.left <= 5_000, `about 5 s left (${route.left} ms)`)
  t.ok(route.deadlineAt !== null && route.deadlineAt <= performance.now() + 5_000)
  t.equal(route.deadlineHeader, null, 'nothing is forwarded without the option')
  t.same(await seenVia(app, '/seen', { [HEADER]: '100' }), { left: null, deadlineAt: null, deadlineHeader: null }, 'the header is not read without the option')
})

test('the plugin alone honours a route\'s config.deadlineMs', async (t) => {
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  app.get('/route', { config: { deadlineMs: 2_000 } }, async () => seen())
  app.get('/none', async () => seen())
  const route = await seenVia(app, '/route')
  t.ok(route.left !== null && route.left > 1_000 && route.left <= 2_000, `about 2 s left (${route.left} ms)`)
  t.same(await seenVia(app, '/none'), { left: null, deadlineAt: null, deadlineHeader: null })
})

test('the inbound header alone sets the deadline; forward decides whether it is passed on', async (t) => {
  const forwarding = await appWith(t, { header: HEADER, forward: true })
  const before = performance.now()
  const header = await seenVia(forwarding, '/seen', { [HEADER]: '3000' })
  const after = performance.now()
  t.ok(header.left !== null && header.left > 2_000 && header.left <= 3_000, `about 3 s left (${header.left} ms)`)
  t.ok(header.deadlineAt !== null && header.deadlineAt >= before + 3_000 && header.deadlineAt <= after + 3_000, 'arrival + 3 s, on the performance.now() time base')
  t.equal(header.deadlineHeader, HEADER)

  const quiet = await appWith(t, { header: 'X-Budget-Ms', forward: false })
  const own = await seenVia(quiet, '/seen', { 'x-budget-ms': '3000', [HEADER]: '100' })
  t.ok(own.left !== null && own.left > 2_000 && own.left <= 3_000, `the configured header is read, whatever its case (${own.left} ms)`)
  t.equal(own.deadlineHeader, null, 'forward: false forwards nothing')
})

test('the smaller of the header\'s and the route\'s budgets wins', async (t) => {
  const app = await appWith(t, { header: HEADER, forward: true })
  const header = await seenVia(app, '/route', { [HEADER]: '1500' })
  t.ok(header.left !== null && header.left > 500 && header.left <= 1_500, `the header's 1.5 s (${header.left} ms)`)
  const route = await seenVia(app, '/route', { [HEADER]: '60000' })
  t.ok(route.left !== null && route.left > 4_000 && route.left <= 5_000, `the route's 5 s (${route.left} ms)`)
})

test('currentDeadline() shrinks as the handler awaits, and stops at 0', async (t) => {
  const upstream = await startCountingUpstream(t)
  const client = createHttpClient({ name: 'up', baseUrl: upstream.url, retry: false })
  t.teardown(() => client.close())
  const app = await appWith(t, { header: HEADER, forward: true })
  app.get('/shrinks', async () => {
    const first = currentDeadline() ?? Number.NaN
    await sleep(30)
    const afterSleep = currentDeadline() ?? Number.NaN
    await (await client.get('/work')).text()
    await new Promise<void>((resolve) => setImmediate(resolve))
    const afterCall = currentDeadline() ?? Number.NaN
    return { first, afterSleep, afterCall }
  })
  app.get('/expires', async () => {
    await sleep(60)
    return { left: currentDeadline() ?? null }
  })
  const { first, afterSleep, afterCall } = (await app.inject({ url: '/shrinks', headers: { [HEADER]: '10000' } })).json<Record<string, number>>()
  t.ok(first <= 10_000 && first > 9_000, `${first} ms at first`)
  t.ok(first - afterSleep >= 25, `at least ~30 ms fewer after sleeping (${first} -> ${afterSleep})`)
  t.ok(afterCall < afterSleep, `fewer still after an upstream call (${afterSleep} -> ${afterCall})`)
  t.equal(upstream.hits.length, 1)

  t.same((await app.inject({ url: '/expires', headers: { [HEADER]: '20' } })).json(), { left: 0 }, '0 once passed, never negative')
})

test('no deadline outside a request, nor in a request without one', async (t) => {
  t.equal(currentDeadline(), undefined)
  t.equal(currentInboundContext(), undefined)
  const app = await appWith(t, { header: HEADER, forward: true })
  let inTimer: number | undefined | null = null
  app.addHook('onReady', async () => { setTimeout(() => { inTimer = currentDeadline() }, 1).unref() })
  await app.ready()
  t.same(await seenVia(app, '/seen'), { left: null, deadlineAt: null, deadlineHeader: HEADER })
  await sleep(10)
  t.equal(inTimer, undefined, 'a timer started at startup sees none')
  t.equal(currentDeadline(), undefined)
})

test('300 concurrent requests with distinct budgets each see their own deadline, never another\'s', async (t) => {
  const upstream = await startCountingUpstream(t)
  const client = createHttpClient({ name: 'up', baseUrl: upstream.url, retry: false, pool: { connections: 8 } })
  t.teardown(() => client.close())
  const app = await appWith(t, { header: HEADER, forward: true })
  app.get<{ Querystring: { k: string } }>('/own', async (request) => {
    const k = Number(request.query.k)
    const lefts: number[] = []
    for (let step = 0; step < 3; step++) {
      await sleep(k % 7)
      if (k % 3 === step) await (await client.get('/work', { query: { k } })).text()
      lefts.push(currentDeadline() ?? Number.NaN)
    }
    return { lefts }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new Agent({ connections: 32 })
  t.teardown(() => agent.close())
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  // Budgets 10 s apart: a request that read another's would be off by 10 s or more.
  const budgetOf = (k: number): number => 100_000 + k * 10_000
  const replies = await Promise.all(Array.from({ length: 300 }, async (_, k) => {
    const res = await undiciRequest(`${base}/own?k=${k}`, { dispatcher: agent, headers: { [HEADER]: String(budgetOf(k)) } })
    return { status: res.statusCode, body: await res.body.json() as { lefts: number[] } }
  }))
  let wrong = 0
  for (const [k, { status, body }] of replies.entries()) {
    const budget = budgetOf(k)
    const ok = status === 200 && body.lefts.length === 3 &&
      body.lefts.every((left, i) => left <= budget && left > budget - 10_000 && (i === 0 || left <= body.lefts[i - 1]))
    if (!ok) wrong++
  }
  t.equal(wrong, 0, 'each request saw only its own, shrinking, deadline')
  t.equal(upstream.hits.length, 300)
})

test('a route registered with a bad config.deadlineMs fails its registration', async (t) => {
  const app = await appWith(t, false)
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '100', null]) {
    t.throws(() => app.get(`/bad-${String(bad)}`, { config: { deadlineMs: bad as number } }, async () => 'never'),
      { name: 'InvalidOptionsError', option: 'config.deadlineMs', message: new RegExp(`route GET /bad-${String(bad)}: must be a positive finite number`) }, String(bad))
  }
  app.get('/fraction', { config: { deadlineMs: 0.5 } }, async () => seen())
  const fraction = await seenVia(app, '/fraction')
  t.ok(fraction.left !== null && fraction.left <= 0.5, 'a fraction of a ms is a deadline too')

  const nested = Fastify()
  t.teardown(() => nested.close())
  await nested.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  nested.register(async (child) => { child.get('/child', { config: { deadlineMs: -5 } }, async () => 'never') })
  await t.rejects(async () => { await nested.ready() }, { option: 'config.deadlineMs', message: /route GET \/child/ }, 'in an encapsulated plugin too')
})

test('a route registered before the plugin: a bad config.deadlineMs is ignored, a good one used', async (t) => {
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  app.get('/early-bad', { config: { deadlineMs: -5 } }, async () => seen())
  app.get('/early-good', { config: { deadlineMs: 3_000 } }, async () => seen())
  await app.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  t.same(await seenVia(app, '/early-bad'), { left: null, deadlineAt: null, deadlineHeader: null })
  const good = await seenVia(app, '/early-good')
  t.ok(good.left !== null && good.left > 2_000 && good.left <= 3_000, `${good.left} ms`)
})
