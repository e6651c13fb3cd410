import Fastify from 'fastify'
import { test, type Test } from 'tap'
import type { Dispatcher } from 'undici'
import diagnosticsChannel from 'node:diagnostics_channel'
import resilientHttp, { CHANNELS, CircuitOpenError, createHttpClient, type HttpClient, InvalidRequestError, InvalidResponseError, TimeoutError, UpstreamError } from '../plugin'
import './helpers/fastify-types'
import { sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'

async function upstreamFor (t: Test, handler: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  return upstream
}

function clientFor (t: Test, baseUrl: string, options: Record<string, unknown> = {}): HttpClient {
  const client = createHttpClient({ name: 'edges', baseUrl, retry: false, ...options })
  t.teardown(() => client.close())
  return client
}

test('a given dispatcher that throws: the call rejects with UpstreamError, nothing is left running', async (t) => {
  const broken = { dispatch (): boolean { throw new Error('dispatcher is broken') } } as unknown as Dispatcher
  const client = clientFor(t, 'http://127.0.0.1:9', { dispatcher: broken })
  const error = await rejection(client.get('/x'))
  t.ok(error instanceof UpstreamError, 'UpstreamError')
  t.match((error as UpstreamError).cause, { message: 'dispatcher is broken' })
  t.equal(client.stats().inFlight, 0)
  t.equal(client.stats().pool, undefined, 'a dispatcher that keeps no stats has none to show')
})

test('a large 2xx body nobody reads yet is held back, then read whole', async (t) => {
  const big = 'x'.repeat(512 * 1024)
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { big }))
  const client = clientFor(t, upstream.url)
  const res = await client.get('/big')
  // Let the body arrive past the unread high-water mark before anyone reads it.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const body = await res.json<{ big: string }>()
  t.equal(body.big.length, big.length)
  t.equal((await res.text()).length, JSON.stringify({ big }).length, 'a body that arrived whole reads the same again')
})

test('a body that failed before anyone read it: json() and body report the failure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 })
    res.write('{"partial":')
    setTimeout(() => res.socket?.destroy(), 10)
  })
  const client = clientFor(t, upstream.url)
  const first = await client.get('/cut')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.ok(await rejection(first.json()) instanceof UpstreamError, 'json() rejects with UpstreamError')
  const second = await client.get('/cut')
  await new Promise((resolve) => setTimeout(resolve, 100))
  const error = await new Promise((resolve) => second.body.on('error', resolve).resume())
  t.ok(error instanceof UpstreamError, 'the stream made afterwards errors with UpstreamError')
})

test('a complete body that is not JSON: json() rejects with InvalidResponseError, the parse error its cause', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{not json')
  })
  const client = clientFor(t, upstream.url)
  const res = await client.get('/bad')
  await new Promise((resolve) => setTimeout(resolve, 20))
  const error = await rejection(res.json())
  t.type(error, InvalidResponseError)
  t.type((error as Error).cause, SyntaxError)
})

test('fastify.httpClients reads as undefined for names generic code probes for', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { api: { baseUrl: 'http://127.0.0.1:9' } } })
  await app.ready()
  const clients = app.httpClients as unknown as Record<string, unknown>
  t.equal(clients.then, undefined, 'not a thenable')
  t.equal(clients.toJSON, undefined)
  t.equal(await Promise.resolve(app.httpClients), app.httpClients, 'awaiting it is harmless')
})

test('while the circuit is open a call without options is refused like any other', async (t) => {
  const client = clientFor(t, 'http://127.0.0.1:9', { circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } })
  await rejection(client.get('/open-it'))
  t.equal(client.stats().circuit, 'open')
  const published: unknown[] = []
  const listener = (message: unknown): void => { published.push(message) }
  diagnosticsChannel.subscribe(CHANNELS.shortCircuited, listener)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.shortCircuited, listener))

  const refused = await rejection(client.get('/x'))
  t.ok(refused instanceof CircuitOpenError, 'CircuitOpenError')
  t.match(refused, { clientName: 'edges', method: 'GET', path: '/x', statusCode: 503 })
  t.ok((refused as CircuitOpenError).remainingMs > 0 && (refused as CircuitOpenError).remainingMs <= 60_000)
  t.ok(await rejection(client.get('/../admin')) instanceof InvalidRequestError, 'a path that cannot be sent is still refused as such')
  t.ok(await rejection(client.get('/x', {})) instanceof CircuitOpenError, 'with options too')
  t.same(published, [
    { client: 'edges', method: 'GET', path: '/x', remainingMs: (refused as CircuitOpenError).remainingMs },
    { client: 'edges', method: 'GET', path: '/x', remainingMs: (published[1] as { remainingMs: number })?.remainingMs }
  ])
  t.equal(client.stats().shortCircuited, 2)
  t.equal(client.stats().requests, 3)

  // A request whose deadline has passed hears of its deadline, not of the circuit.
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { open: { baseUrl: 'http://127.0.0.1:9', retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } } } })
  app.get('/late', { config: { deadlineMs: 1 } }, async (request) => {
    await rejection(request.server.httpClients.open.get('/open-it'))
    await new Promise((resolve) => setTimeout(resolve, 20))
    const error = await rejection(request.server.httpClients.open.get('/x'))
    return { deadline: error instanceof TimeoutError && error.kind === 'deadline' }
  })
  t.same((await app.inject({ url: '/late' })).json(), { deadline: true })
})

test('a connection made after its attempt timed out is not used for it: the late request is aborted unsent', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const net = await import('node:net')
  // A connector that connects, but only after 300 ms.
  const late = (options: { hostname: string, port: string }, callback: (error: Error | null, socket: unknown) => void): void => {
    setTimeout(() => {
      const socket = net.connect(Number(options.port), options.hostname, () => callback(null, socket))
    }, 300)
  }
  const client = clientFor(t, upstream.url, { pool: { connect: late } })
  const error = await rejection(client.get('/x', { timeout: 100 }))
  t.ok(error instanceof TimeoutError, 'the attempt timed out while connecting')
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.equal(upstream.hits.length, 0, 'the request was not sent once the connection came')
})

test('a streamed body is read with backpressure', async (t) => {
  const chunk = 'y'.repeat(64 * 1024)
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    for (let i = 0; i < 32; i++) res.write(chunk)
    res.end()
  })
  const client = clientFor(t, upstream.url)
  const res = await client.get('/stream')
  const body = res.body
  t.equal(res.body, body, 'one stream per response')
  let size = 0
  for await (const part of body) {
    size += (part as Buffer).length
    // A slow reader: the controller is paused and resumed as the stream drains.
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(size, 32 * chunk.length)
  t.equal((await rejection(res.json()) as Error).name, 'TypeError', 'a streamed body cannot be read again')
})

test('one body, one reader at a time; a finished body can still be had as a stream', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => {
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"a":')
      setTimeout(() => res.end('1}'), 100)
      return
    }
    sendJson(res, 200, { done: true })
  })
  const client = clientFor(t, upstream.url)
  const slow = await client.get('/slow')
  const first = slow.json()
  t.equal((await rejection(slow.text()) as Error).name, 'TypeError', 'a second reader while the first waits')
  t.same(await first, { a: 1 })
  const done = await client.get('/done')
  await new Promise((resolve) => setTimeout(resolve, 20))
  let text = ''
  for await (const part of done.body) text += String(part)
  t.same(JSON.parse(text), { done: true })
})

test('a body whose length does not match its content-length header is an InvalidRequestError, not an upstream failure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const client = clientFor(t, upstream.url, { circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } })
  const error = await rejection(client.post('/x', { body: 'abc', headers: { 'content-length': '10' } }))
  t.ok(error instanceof InvalidRequestError, 'InvalidRequestError')
  t.equal(client.stats().circuit, 'closed', 'the breaker does not count it')
})

test('a queued attempt that times out leaves the queue without disturbing the others', async (t) => {
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const upstream = await upstreamFor(t, async (req, res) => {
    if (req.url === '/hold') await held
    sendJson(res, 200, { url: req.url })
  })
  const client = clientFor(t, upstream.url, { pool: { connections: 1 } })
  const first = client.get('/hold')
  while (upstream.hits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))
  const second = client.get('/second')
  const middle = rejection(client.get('/middle', { timeout: 100 }))
  const third = client.get('/third')
  t.ok(await middle instanceof TimeoutError, 'the middle one timed out in the queue')
  release()
  t.same((await (await first).json()), { url: '/hold' })
  t.same((await (await second).json()), { url: '/second' })
  t.same((await (await third).json()), { url: '/third' })
  t.same(upstream.hits.map((hit) => hit.url), ['/hold', '/second', '/third'])
})

test('a caller may abort with any reason; a call option deadline other than false is refused', async (t) => {
  const upstream = await upstreamFor(t, () => {})
  const client = clientFor(t, upstream.url)
  const controller = new AbortController()
  const call = rejection(client.get('/hang', { signal: controller.signal }))
  while (upstream.hits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))
  controller.abort('the user went away')
  t.equal(await call, 'the user went away', 'rejects with the reason as given')
  const refused = await rejection(client.get('/x', { deadline: true as unknown as false }))
  t.ok(refused instanceof InvalidRequestError)
  t.match((refused as Error).message, /deadline must be false/)
})

test('a given undici Agent: its per-origin stats are the client\'s pool stats; pool connector options pass through', async (t) => {
  const { Agent } = await import('undici')
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const agent = new Agent()
  t.teardown(() => agent.close())
  const viaAgent = clientFor(t, upstream.url, { dispatcher: agent })
  await (await viaAgent.get('/x')).text()
  t.match(viaAgent.stats().pool, { connected: 1, running: 0 })
  const own = clientFor(t, upstream.url, { pool: { autoSelectFamily: false, connectTimeout: 1_000 } })
  t.equal((await own.get('/y')).statusCode, 200)
})

test('a Retry-After date that does not parse sets no wait', async (t) => {
  const { retryAfterDelay } = await import('../lib/pipeline/backoff')
  t.equal(retryAfterDelay('Mon, 99 Foo 2024 99:99:99 GMT', 0), undefined)
})
