import fastifyRequestContext, { requestContext } from '@fastify/request-context'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import resilientHttp, { currentRequestId, requestIdGenerator } from '../plugin'
import { currentInboundContext } from '../lib/inbound/request-context'
import type { ClientOptions } from '../lib/types'
import { createDeepService, DEEP_STEPS } from './helpers/deep-module'
import './helpers/fastify-types'
import { seededRandom } from './helpers/fault-upstream'
import { type Hit, sendJson, startUpstream, type Upstream } from './helpers/upstream'

declare module '@fastify/request-context' {
  interface RequestContextData {
    requestId?: string
    tenant?: string
  }
}

function query (hit: Hit, name: string): string | null {
  return new URL(hit.url, 'http://upstream').searchParams.get(name)
}

/** An upstream that answers JSON, `/body` in three chunks written apart, after `?wait=` ms. */
async function startScriptedUpstream (t: Test): Promise<Upstream> {
  const upstream = await startUpstream(async (_req, res, hit) => {
    const wait = Number(query(hit, 'wait') ?? 0)
    if (wait > 0) await sleep(wait)
    if (hit.url.startsWith('/body')) {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('one,')
      await sleep(3)
      res.write('two,')
      await sleep(3)
      res.end('three')
      return
    }
    sendJson(res, 200, { ok: true })
  })
  t.teardown(() => upstream.close())
  return upstream
}

async function listen (t: Test, app: FastifyInstance): Promise<{ base: string, agent: Agent }> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new Agent()
  t.teardown(() => agent.close())
  return { base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, agent }
}

async function newApp (t: Test, upstream: Upstream, client: Partial<ClientOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url, ...client } } })
  return app
}

test('the id reaches the upstream from a handler and from a module that never saw the request', async (t) => {
  const upstream = await startScriptedUpstream(t)
  // Few connections: sockets opened for one request carry the calls of others.
  const app = await newApp(t, upstream, { pool: { connections: 2 } })
  const service = createDeepService(app.httpClients.up)
  app.get<{ Querystring: { marker: string } }>('/work', async (request) => {
    const { marker } = request.query
    await (await app.httpClients.up.get('/handler', { query: { marker, step: 'handler' } })).text()
    const statuses = await service.run(marker)
    return { statuses, idAfter: currentRequestId() }
  })
  const { base, agent } = await listen(t, app)

  const ids = ['deep-a', 'deep-b', 'deep-c', 'deep-d']
  const replies = await Promise.all(ids.map(async (id) => {
    const res = await undiciRequest(`${base}/work?marker=${id}`, { dispatcher: agent, headers: { 'x-request-id': id } })
    return { statusCode: res.statusCode, echoed: res.headers['x-request-id'], body: await res.body.json() as { statuses: number[], idAfter: string } }
  }))

  const expectedSteps = ['handler', 'body', ...DEEP_STEPS].sort()
  for (const [i, id] of ids.entries()) {
    t.equal(replies[i].statusCode, 200, id)
    t.equal(replies[i].echoed, id)
    t.same(replies[i].body.statuses, DEEP_STEPS.map(() => 200))
    t.equal(replies[i].body.idAfter, id, 'currentRequestId() after the deep calls')
    const hits = upstream.hits.filter((hit) => query(hit, 'marker') === id)
    t.same(hits.map((hit) => query(hit, 'step')).sort(), expectedSteps, `${id}: every step called once`)
    for (const hit of hits) {
      t.equal(hit.headers['x-request-id'], id, `${id}: step ${query(hit, 'step') ?? '?'} carries its request's id`)
    }
  }
  t.equal(upstream.hits.length, ids.length * expectedSteps.length)
})

test('200 interleaved concurrent requests: every upstream call carries its own request\'s id', async (t) => {
  const upstream = await startScriptedUpstream(t)
  const app = await newApp(t, upstream, { pool: { connections: 8 } })

  // `plan` is one entry per upstream call: how to wait before it (a = awaits,
  // t = inside a setTimeout, i = inside a setImmediate) and for how many ms.
  app.get<{ Querystring: { marker: string, plan: string } }>('/fan', async (request) => {
    const { marker, plan } = request.query
    const seen: Array<string | undefined> = []
    for (const [index, step] of plan.split(',').entries()) {
      const kind = step[0]
      const ms = Number(step.slice(1))
      const wait = String(ms % 7)
      const call = async (): Promise<void> => {
        const res = await app.httpClients.up.get('/fan', { query: { marker, index, wait } })
        await res.text()
        seen.push(currentRequestId())
      }
      if (kind === 't') {
        await new Promise<void>((resolve, reject) => { setTimeout(() => { call().then(resolve, reject) }, ms) })
      } else if (kind === 'i') {
        await sleep(ms)
        await new Promise<void>((resolve, reject) => { setImmediate(() => { call().then(resolve, reject) }) })
      } else {
        await sleep(ms)
        await Promise.resolve()
        await call()
      }
    }
    return { seen }
  })
  const { base, agent } = await listen(t, app)

  const random = seededRandom(20240611)
  const requests = Array.from({ length: 200 }, (_, k) => {
    const calls = 1 + Math.floor(random() * 3)
    const plan = Array.from({ length: calls }, () => 'ati'[Math.floor(random() * 3)] + String(Math.floor(random() * 15)))
    return { id: `fan-${k}-${Math.floor(random() * 1e9).toString(36)}`, marker: `m${k}`, plan, startIn: Math.floor(random() * 20) }
  })

  const replies = await Promise.all(requests.map(async ({ id, marker, plan, startIn }) => {
    await sleep(startIn)
    const res = await undiciRequest(`${base}/fan?marker=${marker}&plan=${plan.join(',')}`, { dispatcher: agent, headers: { 'x-request-id': id } })
    return { statusCode: res.statusCode, echoed: res.headers['x-request-id'], body: await res.body.json() as { seen: string[] } }
  }))

  const idByMarker = new Map(requests.map(({ id, marker }) => [marker, id]))
  const callsByMarker = new Map<string, number>()
  let wrong = 0
  for (const hit of upstream.hits) {
    const marker = query(hit, 'marker') ?? ''
    callsByMarker.set(marker, (callsByMarker.get(marker) ?? 0) + 1)
    if (hit.headers['x-request-id'] !== idByMarker.get(marker)) wrong++
  }
  t.equal(wrong, 0, 'no upstream call carries another request\'s id, or none')
  t.equal(upstream.hits.length, requests.reduce((sum, { plan }) => sum + plan.length, 0), 'every call arrived once')
  let badReplies = 0
  for (const [k, { id, marker, plan }] of requests.entries()) {
    const reply = replies[k]
    if (callsByMarker.get(marker) !== plan.length || reply.statusCode !== 200 || reply.echoed !== id ||
      reply.body.seen.length !== plan.length || reply.body.seen.some((seen) => seen !== id)) badReplies++
  }
  t.equal(badReplies, 0, 'each request made its calls, saw its own id and got it echoed')
})

test('outside requests no id is sent: a startup call and a timer started at startup, even while requests are served', async (t) => {
  const upstream = await startScriptedUpstream(t)
  const app = await newApp(t, upstream)
  let inFlight = 0
  let ticksDuringRequests = 0
  let ticks = 0
  let interval: NodeJS.Timeout | undefined
  t.teardown(() => clearInterval(interval))
  const pendingTicks: Array<Promise<string | undefined>> = []
  const tick = async (): Promise<string | undefined> => {
    if (inFlight > 0) ticksDuringRequests++
    const res = await app.httpClients.up.get('/tick', { query: { marker: 'tick', n: ticks++ } })
    await res.text()
    return currentRequestId()
  }
  app.addHook('onReady', async () => {
    interval = setInterval(() => { pendingTicks.push(tick()) }, 3)
  })
  app.addHook('onRequest', async () => { inFlight++ })
  app.addHook('onResponse', async () => { inFlight-- })
  app.get('/slow', async (request) => {
    await sleep(30)
    await (await app.httpClients.up.get('/served', { query: { marker: request.id } })).text()
    return { id: request.id }
  })

  await app.ready()
  t.equal(currentRequestId(), undefined, 'no id at startup')
  await (await app.httpClients.up.get('/startup', { query: { marker: 'startup' } })).text()

  const { base, agent } = await listen(t, app)
  const ids = Array.from({ length: 20 }, (_, i) => `served-${i}`)
  await Promise.all(ids.map(async (id) => {
    const res = await undiciRequest(`${base}/slow`, { dispatcher: agent, headers: { 'x-request-id': id } })
    await res.body.dump()
  }))
  clearInterval(interval)
  const idsSeenByTicks = await Promise.all(pendingTicks)
  t.same(idsSeenByTicks.filter((id) => id !== undefined), [], 'currentRequestId() is undefined in the timer')

  const startup = upstream.hits.filter((hit) => query(hit, 'marker') === 'startup')
  t.equal(startup.length, 1)
  t.equal(startup[0].headers['x-request-id'], undefined, 'the startup call sends no id')
  const tickHits = upstream.hits.filter((hit) => query(hit, 'marker') === 'tick')
  t.ok(ticksDuringRequests >= 1, `the timer fired while requests were served (${ticksDuringRequests} times)`)
  t.equal(tickHits.length, ticks)
  t.same(tickHits.filter((hit) => hit.headers['x-request-id'] !== undefined).map((hit) => hit.headers['x-request-id']), [], 'no timer call carries an id')
  for (const id of ids) {
    const served = upstream.hits.filter((hit) => query(hit, 'marker') === id)
    t.equal(served.length, 1)
    t.equal(served[0].headers['x-request-id'], id)
  }
})

for (const mode of ['before', 'after', 'none'] as const) {
  test(`@fastify/request-context registered ${mode === 'none' ? 'not at all' : `${mode} the plugin`}`, async (t) => {
    const upstream = await startScriptedUpstream(t)
    const app = Fastify({ genReqId: requestIdGenerator() })
    t.teardown(() => app.close())
    if (mode === 'before') await app.register(fastifyRequestContext, { defaultStoreValues: { tenant: 'default' } })
    await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url } } })
    if (mode === 'after') await app.register(fastifyRequestContext, { defaultStoreValues: { tenant: 'default' } })
    const hasContext = mode !== 'none'
    t.equal(app.hasRequestDecorator('requestContext'), hasContext)

    const service = createDeepService(app.httpClients.up)
    // Calls from the app's own hooks, which run before the handler.
    const callFrom = (step: string) => async (request: FastifyRequest): Promise<void> => {
      await (await app.httpClients.up.get('/hook', { query: { marker: request.id, step } })).text()
    }
    app.addHook('onRequest', async (request) => {
      if (hasContext) request.requestContext.set('tenant', request.headers['x-tenant'] as string)
      await callFrom('onRequest')(request)
    })
    app.addHook('preParsing', callFrom('preParsing'))
    app.addHook('preValidation', callFrom('preValidation'))
    app.addHook('preHandler', callFrom('preHandler'))
    app.get('/ctx', async (request) => {
      await (await app.httpClients.up.get('/handler', { query: { marker: request.id, step: 'handler' } })).text()
      await service.run(request.id)
      return {
        current: currentRequestId(),
        imported: requestContext.get('requestId'),
        decorated: hasContext ? request.requestContext.get('requestId') : 'n/a',
        tenant: requestContext.get('tenant') ?? null
      }
    })
    const { base, agent } = await listen(t, app)

    for (const id of [`${mode}-1`, `${mode}-2`]) {
      const res = await undiciRequest(`${base}/ctx`, { dispatcher: agent, headers: { 'x-request-id': id, 'x-tenant': `tenant-of-${id}` } })
      t.equal(res.statusCode, 200)
      t.equal(res.headers['x-request-id'], id)
      t.same(await res.body.json(), {
        current: id,
        imported: id,
        decorated: hasContext ? id : 'n/a',
        tenant: hasContext ? `tenant-of-${id}` : null
      }, 'the handler reads the id, and the app\'s own values, from the context')
      const hits = upstream.hits.filter((hit) => query(hit, 'marker') === id)
      t.same(hits.map((hit) => query(hit, 'step')).sort(),
        ['onRequest', 'preParsing', 'preValidation', 'preHandler', 'handler', 'body', ...DEEP_STEPS].sort())
      for (const hit of hits) t.equal(hit.headers['x-request-id'], id, `${id}: ${query(hit, 'step') ?? '?'} carries the id`)
    }

    t.equal(currentRequestId(), undefined, 'no id outside a request')
    t.equal(requestContext.get('requestId'), undefined)
    await (await app.httpClients.up.get('/outside', { query: { marker: 'outside' } })).text()
    t.equal(upstream.hits.find((hit) => query(hit, 'marker') === 'outside')?.headers['x-request-id'], undefined)
  })
}

test('an inject()ed request propagates its id like a real one', async (t) => {
  const upstream = await startScriptedUpstream(t)
  const app = await newApp(t, upstream)
  const service = createDeepService(app.httpClients.up)
  app.get('/deep', async (request) => {
    await service.run(request.id)
    return { id: currentRequestId() }
  })
  const reply = await app.inject({ url: '/deep', headers: { 'x-request-id': 'injected-1' } })
  t.equal(reply.statusCode, 200)
  t.same(reply.json(), { id: 'injected-1' })
  const hits = upstream.hits.filter((hit) => query(hit, 'marker') === 'injected-1')
  t.equal(hits.length, DEEP_STEPS.length + 1)
  t.same(hits.filter((hit) => hit.headers['x-request-id'] !== 'injected-1').map((hit) => query(hit, 'step')), [])
})

// A request with a body reaches the handler from its 'end' event, outside the
// context opened in onRequest: the plugin must enter it again.
for (const order of ['none', 'before', 'after'] as const) {
  test(`an inbound POST with a body propagates its id (request-context: ${order})`, async (t) => {
    const upstream = await startScriptedUpstream(t)
    const app = Fastify({ genReqId: requestIdGenerator() })
    t.teardown(() => app.close())
    if (order === 'before') await app.register(fastifyRequestContext)
    await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url } } })
    if (order === 'after') await app.register(fastifyRequestContext)
    const seen: Array<string | undefined> = []
    app.addHook('preHandler', async () => { seen.push(currentRequestId()) })
    app.post('/orders', async (request) => {
      await sleep(2)
      seen.push(currentRequestId())
      const res = await request.server.httpClients.up.get(`/?marker=${(request.body as { marker: string }).marker}`)
      return res.json()
    })
    const { base, agent } = await listen(t, app)
    const ids = ['post-a', 'post-b', 'post-c']
    // The body comes in two parts apart, so it arrives after onRequest has run.
    async function * slowBody (id: string): AsyncGenerator<string> {
      yield '{"marker":'
      await sleep(20)
      yield JSON.stringify(id) + '}'
    }
    const replies = await Promise.all(ids.map((id) => undiciRequest(`${base}/orders`, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'x-request-id': id, 'content-type': 'application/json' },
      body: Readable.from(slowBody(id))
    })))
    for (const reply of replies) {
      t.equal(reply.statusCode, 200)
      await reply.body.dump()
    }
    t.equal(upstream.hits.length, ids.length)
    for (const hit of upstream.hits) t.equal(hit.headers['x-request-id'], query(hit, 'marker'), 'each upstream hit carries its own id')
    t.same([...seen].sort(), [...ids, ...ids].sort(), 'the hook and the handler both see the id')
  })
}

// A handler that runs app.inject() for another request (a BFF composing its
// own routes) must keep its own id: the inner request gets a store of its own.
for (const order of ['none', 'before', 'after'] as const) {
  test(`app.inject() inside a handler leaves the outer request's id in place (request-context: ${order})`, async (t) => {
    const upstream = await startScriptedUpstream(t)
    const app = Fastify({ genReqId: requestIdGenerator() })
    t.teardown(() => app.close())
    if (order === 'before') await app.register(fastifyRequestContext)
    await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url } } })
    if (order === 'after') await app.register(fastifyRequestContext)
    app.get('/inner', async (request) => {
      await (await app.httpClients.up.get('/inner', { query: { marker: request.id } })).text()
      return { id: currentRequestId() }
    })
    app.get('/outer', async (request) => {
      const inner = await app.inject({ url: '/inner', headers: { 'x-request-id': `${request.id}-inner` } })
      await (await app.httpClients.up.get('/outer', { query: { marker: request.id } })).text()
      return { inner: inner.json(), current: currentRequestId(), imported: requestContext.get('requestId') ?? null }
    })
    const { base, agent } = await listen(t, app)

    const res = await undiciRequest(`${base}/outer`, { dispatcher: agent, headers: { 'x-request-id': 'OUTER' } })
    t.equal(res.statusCode, 200)
    t.same(await res.body.json(), {
      inner: { id: 'OUTER-inner' },
      current: 'OUTER',
      imported: 'OUTER'
    }, 'after the inner request, the handler still reads its own id')
    const hits = upstream.hits.map((hit) => [hit.url.split('?')[0], hit.headers['x-request-id']])
    t.same(hits, [['/inner', 'OUTER-inner'], ['/outer', 'OUTER']], 'each call carries its own request\'s id')
  })
}

test('propagateHeaders naming the request id header, in any case, fails registration', async (t) => {
  const cases = [
    { options: { propagateHeaders: ['traceparent', 'X-Request-ID'] }, option: 'propagateHeaders.1' },
    { options: { propagateHeaders: ['x-request-id'] }, option: 'propagateHeaders.0' },
    { options: { requestIdHeader: 'X-Correlation-ID', propagateHeaders: ['baggage', 'tracestate', 'x-correlation-id'] }, option: 'propagateHeaders.2' }
  ]
  for (const { options, option } of cases) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(resilientHttp, { ...options, clients: { up: { baseUrl: 'http://127.0.0.1:1' } } }) },
      { name: 'InvalidOptionsError', code: 'FRH_INVALID_OPTIONS', option, message: /request id header/ }, option)
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { requestIdHeader: 'x-correlation-id', propagateHeaders: ['x-request-id'], clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  t.pass('another header named x-request-id is fine when it is not the id header')
})

test('the inbound context carries the request\'s own logger, which the app may swap later', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = Fastify({ genReqId: requestIdGenerator(), logger: { level: 'info', stream: { write (line: string) { lines.push(JSON.parse(line) as Record<string, unknown>) } } } })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  app.addHook('preHandler', async (request) => { request.log = request.log.child({ tenant: 'acme' }) })
  app.get('/log', async () => {
    const context = currentInboundContext()
    context?.log.info({ marker: 'through-context' }, 'from the context')
    return { id: context?.requestId ?? null }
  })
  const reply = await app.inject({ url: '/log', headers: { 'x-request-id': 'rid-log' } })
  t.same(reply.json(), { id: 'rid-log' })
  t.match(lines.filter((line) => line.marker === 'through-context'), [{ reqId: 'rid-log', tenant: 'acme', msg: 'from the context' }])
  t.equal(currentInboundContext(), undefined, 'no context outside a request')
})

test('@fastify/request-context told to open its store in preValidation still gives the handler the id', async (t) => {
  const upstream = await startScriptedUpstream(t)
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(fastifyRequestContext, { hook: 'preValidation' })
  await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url } } })
  app.get('/late', async (request) => {
    await (await app.httpClients.up.get('/late', { query: { marker: request.id } })).text()
    return { current: currentRequestId() ?? null, imported: requestContext.get('requestId') ?? null }
  })
  const reply = await app.inject({ url: '/late', headers: { 'x-request-id': 'rid-late' } })
  t.same(reply.json(), { current: 'rid-late', imported: 'rid-late' })
  t.equal(upstream.hits[0]?.headers['x-request-id'], 'rid-late')
})
