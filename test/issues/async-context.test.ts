import fastifyRequestContext, { requestContext } from '@fastify/request-context'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { AsyncLocalStorage } from 'node:async_hooks'
import diagnosticsChannel from 'node:diagnostics_channel'
import { pipeline, Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import { test, type Test } from 'tap'
import resilientHttp, { CHANNELS, createHttpClient, requestIdGenerator } from '../../plugin'
import '../helpers/fastify-types'
import { sendJson, upstreamFor } from '../helpers/upstream'

// 0.2 ran its timers, queued attempts and socket callbacks in no request's
// async context: retry log lines and diagnostics messages about a call lost
// the request's stores, the 'error' listener of a body cut by its timeout ran
// in none, and a queued attempt went out in none.

declare module '@fastify/request-context' {
  interface RequestContextData {
    requestId?: string
  }
}

/** A Fastify app whose pino logger stamps every line with the request id its async context holds. */
async function loggedApp (t: Test, lines: Array<Record<string, unknown>>, clients: Record<string, object>): Promise<FastifyInstance> {
  const destination = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    }
  })
  const logger = pino({ level: 'info', mixin: () => ({ contextId: requestContext.get('requestId') }) }, destination)
  const app = Fastify({ loggerInstance: logger as FastifyBaseLogger, genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  await app.register(fastifyRequestContext)
  await app.register(resilientHttp, { clients })
  return app
}

test('every retry log line carries the id of the request that made the call', async (t) => {
  const answered = new Set<string>()
  const upstream = await upstreamFor(t, (req, res) => {
    const id = String(req.headers['x-request-id'])
    // Each request's first attempt fails; its retry succeeds.
    if (answered.has(id)) sendJson(res, 200, { id })
    else {
      answered.add(id)
      sendJson(res, 503, {})
    }
  })
  const lines: Array<Record<string, unknown>> = []
  const app = await loggedApp(t, lines, { up: { baseUrl: upstream.url, retry: { backoffInitialMs: 1, backoffMaxMs: 20, budget: false }, circuitBreaker: false, pool: { connections: 8 } } })
  app.get('/r', async (request) => (await request.server.httpClients.up.get('/x')).json())

  const ids = Array.from({ length: 120 }, (_, i) => `req-${i}`)
  const replies = await Promise.all(ids.map((id) => app.inject({ url: '/r', headers: { 'x-request-id': id } })))
  t.same(replies.map((reply) => reply.json<{ id: string }>().id), ids, 'each call was retried to its answer')

  const retries = lines.filter((line) => typeof line.msg === 'string' && line.msg.startsWith('retrying'))
  t.equal(retries.length, ids.length, 'one retry line per request')
  const astray = retries.filter((line) => line.contextId !== line.reqId)
  t.same(astray.map((line) => [line.reqId, line.contextId]), [], 'the mixin read each line\'s own request id')
})

test('diagnostics_channel subscribers hear of a call in its caller\'s async context', async (t) => {
  const seen = new Map<string, number>()
  const upstream = await upstreamFor(t, async (req, res) => {
    const path = req.url ?? ''
    const count = (seen.get(path) ?? 0) + 1
    seen.set(path, count)
    if (path.startsWith('/hedged') && count === 1) await sleep(300)
    if (path.startsWith('/retried') && count === 1) await sleep(3_000)
    if (path.startsWith('/refused')) sendJson(res, 503, {})
    else sendJson(res, 200, {})
  })
  const client = createHttpClient({ name: 'heard', baseUrl: upstream.url, timeout: 5_000, retry: { backoffInitialMs: 1, backoffMaxMs: 5, maxAttempts: 2, budget: false }, circuitBreaker: false })
  t.teardown(() => client.close())

  const own = new AsyncLocalStorage<{ caller: string }>()
  const heard: Array<[channel: string, path: string, caller: string | undefined]> = []
  const names = [CHANNELS.retry, CHANNELS.retrySkipped, CHANNELS.hedge]
  const listeners = names.map((name) => {
    const listener = (message: unknown): void => { heard.push([name, (message as { path: string }).path, own.getStore()?.caller]) }
    diagnosticsChannel.subscribe(name, listener)
    return [name, listener] as const
  })
  t.teardown(() => { for (const [name, listener] of listeners) diagnosticsChannel.unsubscribe(name, listener) })

  await Promise.all(Array.from({ length: 6 }, (_, i) => own.run({ caller: `caller-${i}` }, async () => {
    // A retry after an attempt timeout, a hedge after its delay, a retry after a 503 and the retry not made after it.
    // The first attempt is held far past its timeout, which leaves a busy machine time for the retry.
    await (await client.get(`/retried-${i}`, { timeout: 1_000 })).text()
    await (await client.get(`/hedged-${i}`, { hedge: { delayMs: 30 } })).text()
    await (await client.get(`/refused-${i}`)).text()
  })))

  t.equal(heard.filter(([channel]) => channel === CHANNELS.retry).length, 12, 'a timeout retry and a 503 retry per caller')
  t.equal(heard.filter(([channel]) => channel === CHANNELS.hedge).length, 6, 'one hedge per caller')
  t.equal(heard.filter(([channel]) => channel === CHANNELS.retrySkipped).length, 6, 'one retry not made per caller')
  const astray = heard.filter(([, path, caller]) => caller === undefined || path.split('-')[1] !== caller.split('-')[1])
  t.same(astray, [], 'each message was heard in the context of the caller it is about')
})

test('the events of a body cut by its attempt timeout come in the request\'s context', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => {
    if (req.url === '/fallback') {
      sendJson(res, 200, { id: req.headers['x-request-id'] })
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 })
    res.write('{"partial":')
  })
  const app = Fastify({ genReqId: requestIdGenerator() })
  t.teardown(() => app.close())
  // Long enough for the connects and headers of every request on a busy machine: only the bodies are cut.
  await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url, timeout: 1_000, retry: false } } })
  app.get<{ Querystring: { by: string } }>('/r', async (request) => {
    const client = request.server.httpClients.up
    const res = await client.get('/body')
    return await new Promise((resolve) => {
      const done = (seenId: string | undefined): void => {
        // A fallback call made from the callback carries whatever request id its context holds.
        client.get('/fallback').then(async (fallback) => resolve({ seenId, fallbackId: (await fallback.json<{ id?: string }>()).id }), resolve)
      }
      if (request.query.by === 'listener') {
        res.body.on('error', () => { done(requestContext.get('requestId')) })
        res.body.resume()
      } else {
        pipeline(res.body, new Writable({ write: (_chunk, _encoding, next) => { next() } }), () => { done(requestContext.get('requestId')) })
      }
    })
  })

  const ids = Array.from({ length: 16 }, (_, i) => `req-${i}`)
  const replies = await Promise.all(ids.map((id, i) => app.inject({ url: `/r?by=${i % 2 === 0 ? 'listener' : 'pipeline'}`, headers: { 'x-request-id': id } })))
  t.same(replies.map((reply) => reply.json()), ids.map((id) => ({ seenId: id, fallbackId: id })), 'the listener and the pipeline callback ran in their own request\'s context')
})

test('a queued attempt goes out in its own caller\'s context, not in that of the call that freed the connection', async (t) => {
  const upstream = await upstreamFor(t, async (_req, res) => {
    await sleep(20)
    sendJson(res, 200, {})
  })
  const client = createHttpClient({ name: 'queued', baseUrl: upstream.url, pool: { connections: 1 } })
  t.teardown(() => client.close())

  const own = new AsyncLocalStorage<string>()
  const sent: Array<[path: string, caller: string | undefined]> = []
  const onCreate = (message: unknown): void => {
    const request = (message as { request: { path: string, origin: string } }).request
    if (request.origin === upstream.url) sent.push([request.path, own.getStore()])
  }
  diagnosticsChannel.subscribe('undici:request:create', onCreate)
  t.teardown(() => diagnosticsChannel.unsubscribe('undici:request:create', onCreate))

  // One connection: every call after the first waits for the one before it to free it.
  const callers = Array.from({ length: 5 }, (_, i) => `caller-${i}`)
  await Promise.all(callers.map((caller) => own.run(caller, async () => { await (await client.get(`/${caller}`)).text() })))
  t.equal(sent.length, callers.length)
  t.same(sent.filter(([path, caller]) => path !== `/${String(caller)}`), [], 'each attempt was sent in its caller\'s context')
})
