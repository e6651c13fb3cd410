import Fastify from 'fastify'
import { getEventListeners } from 'node:events'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import resilientHttp, { createHttpClient, type HttpClient, InvalidRequestError } from '../plugin'
import type { CallOptions } from '../lib/types'
import './helpers/fastify-types'
import { sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'
import { dispatcherOption } from './helpers/dispatcher'
import { eventually } from './helpers/wait'

function echo (_req: IncomingMessage, res: ServerResponse, hit: { method: string, url: string }): void {
  sendJson(res, 200, { method: hit.method, url: hit.url })
}

async function setup (t: Test, handler = echo, options: Record<string, unknown> = {}): Promise<{ upstream: Upstream, client: HttpClient }> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'svc', baseUrl: `${upstream.url}/v1`, retry: false, ...dispatcherOption(), ...options })
  t.teardown(() => client.close())
  return { upstream, client }
}

test('every method helper sends its method', async (t) => {
  const { upstream, client } = await setup(t)
  const calls: Array<[string, () => Promise<{ statusCode: number }>]> = [
    ['GET', () => client.get('/r')],
    ['POST', () => client.post('/r')],
    ['PUT', () => client.put('/r')],
    ['PATCH', () => client.patch('/r')],
    ['DELETE', () => client.delete('/r')],
    ['HEAD', () => client.head('/r')],
    ['OPTIONS', () => client.options('/r')],
    ['GET', () => client.request({ method: 'GET', path: '/r' })],
    ['PATCH', () => client.request({ method: 'patch', path: '/r' })],
    ['PURGE', () => client.request({ method: 'PURGE', path: '/r' })]
  ]
  for (const [method, call] of calls) {
    const res = await call()
    t.equal(res.statusCode, 200, method)
  }
  t.same(upstream.hits.map((hit) => hit.method), calls.map(([method]) => method))
  t.ok(upstream.hits.every((hit) => hit.url === '/v1/r'))
})

test('a HEAD response has no body', async (t) => {
  const { client } = await setup(t)
  const res = await client.head('/r')
  t.equal(res.headers['content-type'], 'application/json')
  t.equal(await res.text(), '')
})

test('json bodies are sent as JSON with their content type', async (t) => {
  const { upstream, client } = await setup(t)
  const value = { amount: 100, currency: 'EUR', note: 'café ✓', items: [1, null, { a: true }] }
  await client.post('/charge', { json: value })
  const hit = upstream.hits[0]
  t.equal(hit.body, JSON.stringify(value))
  t.equal(hit.headers['content-type'], 'application/json')
  t.equal(hit.headers['content-length'], String(Buffer.byteLength(JSON.stringify(value))))

  // A falsy value is still a body.
  await client.put('/flag', { json: false })
  t.equal(upstream.hits[1].body, 'false')
  t.equal(upstream.hits[1].headers['content-type'], 'application/json')

  // The caller's content type wins, whatever its case.
  await client.patch('/charge', { json: { a: 1 }, headers: { 'Content-Type': 'application/merge-patch+json' } })
  t.equal(upstream.hits[2].headers['content-type'], 'application/merge-patch+json')
  t.equal(upstream.hits[2].body, '{"a":1}')
})

test('string, Buffer and Uint8Array bodies are sent byte for byte', async (t) => {
  const { upstream, client } = await setup(t)
  await client.post('/s', { body: 'plain text é', headers: { 'content-type': 'text/plain' } })
  await client.put('/b', { body: Buffer.from('buffer ✓ body') })
  await client.post('/u', { body: new TextEncoder().encode('uint8 ☃') })
  const backing = new TextEncoder().encode('xxINSIDEyy')
  await client.post('/view', { body: new Uint8Array(backing.buffer, 2, 6) })
  t.same(upstream.hits.map((hit) => hit.body), ['plain text é', 'buffer ✓ body', 'uint8 ☃', 'INSIDE'])
  t.same(upstream.hits.map((hit) => hit.headers['content-length']), ['13', '15', '9', '6'])
  t.equal(upstream.hits[0].headers['content-type'], 'text/plain')
  t.equal(upstream.hits[1].headers['content-type'], undefined, 'no content type is invented')
})

test('stream bodies are sent', async (t) => {
  const { upstream, client } = await setup(t)
  await client.post('/upload', { body: Readable.from([Buffer.from('chunk-1;'), Buffer.from('chunk-2;'), Buffer.from('end')]) })
  async function * generate (): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < 3; i++) {
      await sleep(1)
      yield Buffer.from(`part${i}`)
    }
  }
  await client.put('/upload', { body: generate() })
  t.equal(upstream.hits.length, 2)
  t.equal(upstream.hits[0].body, 'chunk-1;chunk-2;end')
  t.equal(upstream.hits[0].headers['transfer-encoding'], 'chunked')
  t.equal(upstream.hits[1].body, 'part0part1part2')
})

test('json and body together are refused', async (t) => {
  const { upstream, client } = await setup(t)
  const error = await rejection(client.post('/x', { json: { a: 1 }, body: 'a=1' }))
  t.type(error, InvalidRequestError)
  t.equal((error as InvalidRequestError).code, 'FRH_INVALID_REQUEST')
  t.match((error as Error).message, /json/)
  await sleep(20)
  t.equal(upstream.hits.length, 0)
})

test('call headers win over defaultHeaders, without regard to case', async (t) => {
  const raw: string[][] = []
  const { upstream, client } = await setup(t, (req, res, hit) => {
    raw.push(req.rawHeaders)
    echo(req, res, hit)
  }, { defaultHeaders: { 'X-Tenant': 'default', 'x-api-key': 'k1', Accept: 'application/json' } })
  await client.get('/a', { headers: { 'x-tenant': 'call', ACCEPT: 'text/plain', 'x-extra': 'e', 'x-skip': undefined } })
  await client.get('/b')
  const [first, second] = upstream.hits
  t.equal(first.headers['x-tenant'], 'call')
  t.equal(first.headers.accept, 'text/plain')
  t.equal(first.headers['x-api-key'], 'k1')
  t.equal(first.headers['x-extra'], 'e')
  t.notOk('x-skip' in first.headers)
  const count = (list: string[], name: string): number => list.filter((v, i) => i % 2 === 0 && v.toLowerCase() === name).length
  t.equal(count(raw[0], 'x-tenant'), 1)
  t.equal(count(raw[0], 'accept'), 1)
  // Another call is not affected by the first one's headers.
  t.equal(second.headers['x-tenant'], 'default')
  t.equal(second.headers.accept, 'application/json')
  t.notOk('x-extra' in second.headers)
})

test('header values: numbers and repeated values', async (t) => {
  const { upstream, client } = await setup(t)
  await client.get('/a', { headers: { 'x-count': 3, 'x-tags': ['a', 'b'] } })
  t.equal(upstream.hits[0].headers['x-count'], '3')
  t.equal(upstream.hits[0].headers['x-tags'], 'a, b')
})

test('a caller signal that aborts mid-request rejects with its reason', async (t) => {
  let closed = 0
  const { upstream, client } = await setup(t, (_req, res) => {
    // Never answers: only the abort ends the call.
    res.on('close', () => { closed++ })
  })
  const controller = new AbortController()
  const reason = new Error('user went away')
  const pending = client.get('/slow', { signal: controller.signal })
  t.ok(await eventually(() => upstream.hits.length === 1), 'the request reached the upstream')
  t.equal(client.stats().inFlight, 1)
  controller.abort(reason)
  const error = await rejection(pending)
  t.equal(error, reason, 'rejects with the very reason')
  t.ok(await eventually(() => closed === 1), 'the upstream saw the request abandoned')
  const stats = client.stats()
  t.equal(stats.inFlight, 0)
  t.equal(stats.failures, 0, 'an abort is not an upstream failure')
  t.equal(getEventListeners(controller.signal, 'abort').length, 0, 'no listener left on the signal')
})

test('an abort without a reason rejects with an AbortError', async (t) => {
  const { upstream, client } = await setup(t, () => {})
  const controller = new AbortController()
  const pending = client.post('/slow', { signal: controller.signal, json: {} })
  t.ok(await eventually(() => upstream.hits.length === 1))
  controller.abort()
  const error = await rejection(pending)
  t.equal(error, controller.signal.reason)
  t.equal((error as Error).name, 'AbortError')
})

test('an already aborted signal rejects without sending anything', async (t) => {
  const { upstream, client } = await setup(t)
  let connections = 0
  upstream.server.on('connection', () => { connections++ })
  const reason = new Error('too late')
  const error = await rejection(client.get('/x', { signal: AbortSignal.abort(reason) }))
  t.equal(error, reason)
  await sleep(50)
  t.equal(connections, 0)
  t.equal(upstream.hits.length, 0)
  t.equal(client.stats().inFlight, 0)
})

test('an abort while the body streams ends the body with the reason', async (t) => {
  let closed = 0
  const { client } = await setup(t, (_req, res) => {
    res.on('close', () => { closed++ })
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first part;')
  }, { timeout: 5_000 })
  const controller = new AbortController()
  const res = await client.get('/stream', { signal: controller.signal })
  t.equal(res.statusCode, 200)
  t.equal(client.stats().inFlight, 0, 'the call itself is over')
  const reason = new Error('stop reading')
  const reading = res.text()
  await sleep(20)
  controller.abort(reason)
  const error = await rejection(reading)
  t.equal(error, reason)
  t.ok(await eventually(() => closed === 1), 'the upstream saw the response abandoned')
  t.equal(getEventListeners(controller.signal, 'abort').length, 0, 'no listener left on the signal')
})

test('an abort after the body was read changes nothing', async (t) => {
  const { client } = await setup(t)
  const controller = new AbortController()
  const res = await client.get('/x', { signal: controller.signal })
  t.same(await res.json(), { method: 'GET', url: '/v1/x' })
  // undici closes a read body on a later tick; then the client lets go of the signal.
  t.ok(await eventually(() => getEventListeners(controller.signal, 'abort').length === 0), 'the client let go of the signal')
  controller.abort(new Error('late'))
  const again = await client.get('/y')
  t.equal(again.statusCode, 200)
  await again.text()
})

test('stats() counts calls', async (t) => {
  let release: () => void = () => {}
  const { upstream, client } = await setup(t, (req, res, hit) => {
    if (hit.url.endsWith('/500')) return sendJson(res, 500, { error: true })
    if (hit.url.endsWith('/404')) return sendJson(res, 404, { error: true })
    if (hit.url.endsWith('/hold')) {
      release = () => sendJson(res, 200, {})
      return
    }
    echo(req, res, hit)
  })
  t.same(client.stats(), {
    circuit: 'closed',
    inFlight: 0,
    requests: 0,
    successes: 0,
    failures: 0,
    retries: 0,
    retriesDenied: 0,
    shortCircuited: 0,
    hedges: 0,
    hedgeWins: 0,
    overloaded: 0,
    streams: 0,
    rateLimited: 0,
    rateLimitWaits: 0,
    redirects: 0,
    concurrencyLimit: undefined,
    replicas: [{ origin: upstream.url, inFlight: 0, ejected: false, ejections: 0, failures: 0 }],
    pool: { connected: 0, free: 0, pending: 0, queued: 0, running: 0, size: 0 }
  })
  await (await client.get('/ok')).text()
  await (await client.post('/ok', { json: {} })).text()
  t.equal((await client.get('/404')).statusCode, 404)
  t.equal((await client.get('/500')).statusCode, 500)

  const held = client.get('/hold')
  t.ok(await eventually(() => upstream.hits.length === 5), 'the held call reached the upstream')
  t.equal(client.stats().inFlight, 1, 'a held call is in flight')
  release()
  await (await held).text()

  const stats = client.stats()
  t.equal(stats.requests, 5)
  t.equal(stats.successes, 4, '2xx and 404 are successes')
  t.equal(stats.failures, 1, 'the 500 is a failure')
  t.equal(stats.inFlight, 0)
  t.equal(stats.retries, 0)
  t.equal(stats.shortCircuited, 0)
  t.equal(stats.circuit, 'closed')
  const pool = stats.pool
  t.ok(pool !== undefined)
  for (const key of ['connected', 'free', 'pending', 'queued', 'running', 'size'] as const) {
    t.type(pool?.[key], 'number', `pool.${key}`)
  }
  t.ok((pool?.connected ?? 0) >= 1, 'a kept-alive connection')
  t.equal(pool?.running, 0)
})

test('a transport failure counts as a failure', async (t) => {
  const upstream = await startUpstream(echo)
  const url = upstream.url
  await upstream.close()
  const client = createHttpClient({ name: 'gone', baseUrl: url, retry: false, ...dispatcherOption() })
  t.teardown(() => client.close())
  const error = await rejection(client.get('/x'))
  t.match(error, { code: 'FRH_UPSTREAM' })
  t.match(client.stats(), { requests: 1, successes: 0, failures: 1, inFlight: 0 })
})

test('calls through the plugin share the client counters', async (t) => {
  const upstream = await startUpstream(echo)
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { users: { baseUrl: upstream.url, retry: false } } })
  app.get('/twice', async (request) => {
    const users = request.server.httpClients.users
    await (await users.get('/one')).text()
    await (await users.get('/two')).text()
    return users.stats()
  })
  const reply = await app.inject('/twice')
  t.match(reply.json(), { requests: 2, successes: 2, inFlight: 0 })
  t.same(upstream.hits.map((hit) => hit.url), ['/one', '/two'])
})

test('bad call options are refused before anything is sent', async (t) => {
  const { upstream, client } = await setup(t)
  const circular: Record<string, unknown> = {}
  circular.self = circular
  const cases: Array<[string, () => Promise<unknown>]> = [
    ['timeout -1', () => client.get('/x', { timeout: -1 })],
    ['timeout 0', () => client.get('/x', { timeout: 0 })],
    ['timeout a string', () => client.get('/x', { timeout: '5' as never })],
    ['totalTimeout -1', () => client.get('/x', { totalTimeout: -1 })],
    ['totalTimeout NaN', () => client.get('/x', { totalTimeout: NaN })],
    ['body a number', () => client.post('/x', { body: 123 as never })],
    ['body a plain object', () => client.post('/x', { body: { a: 1 } as never })],
    ['body true', () => client.post('/x', { body: true as never })],
    ['json with a BigInt', () => client.post('/x', { json: { n: 1n } })],
    ['json circular', () => client.post('/x', { json: circular })],
    ['json a function', () => client.post('/x', { json: () => 1 })],
    ['method with a space', () => client.request({ method: 'GE T', path: '/x' })],
    ['method with CR LF', () => client.request({ method: 'GET\r\n', path: '/x' })],
    ['method empty', () => client.request({ method: '', path: '/x' })],
    ['method missing', () => client.request({ path: '/x' } as never)],
    ['method a number', () => client.request({ method: 1 as never, path: '/x' })],
    ['request() without options', () => client.request(undefined as never)],
    ['options null', () => client.get('/x', null as never)],
    ['options a string', () => client.get('/x', 'fast' as never)],
    ['signal not a signal', () => client.get('/x', { signal: 'abort' as never })],
    ['retry maxAttempts 0', () => client.get('/x', { retry: { maxAttempts: 0 } })],
    ['retry unknown key', () => client.get('/x', { retry: { tries: 2 } as never })],
    ['retry true', () => client.get('/x', { retry: true as never })],
    ['query a string', () => client.get('/x', { query: 'a=1' as never })],
    ['headers an array', () => client.get('/x', { headers: ['x-a', '1'] as never })],
    ['header value an object', () => client.get('/x', { headers: { 'x-a': {} as never } })]
  ]
  for (const [description, call] of cases) {
    const error = await rejection(call())
    t.type(error, InvalidRequestError, description)
    t.equal((error as InvalidRequestError).code, 'FRH_INVALID_REQUEST', `${description}: code`)
    t.equal((error as InvalidRequestError).clientName, 'svc', `${description}: client`)
  }
  await sleep(20)
  t.equal(upstream.hits.length, 0)
  t.match(client.stats(), { requests: 0, inFlight: 0, failures: 0 })
})

test('valid per-call overrides are accepted', async (t) => {
  const { upstream, client } = await setup(t)
  const options: CallOptions = { timeout: 1_000, totalTimeout: 2_000, retry: { maxAttempts: 2, backoffInitialMs: 1, backoffMaxMs: 1 }, idempotencyKey: 'key-1' }
  const res = await client.post('/x', options)
  t.equal(res.statusCode, 200)
  await res.text()
  t.equal(upstream.hits[0].headers['idempotency-key'], 'key-1')
  const generated = await client.post('/y', { idempotencyKey: true })
  await generated.text()
  t.match(upstream.hits[1].headers['idempotency-key'], /^[0-9a-f-]{36}$/)
})
