import Fastify from 'fastify'
import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import resilientHttp, {
  createHttpClient, type HttpClient, HttpClientError, HttpResponse, HttpStatusError, ResponseTooLargeError
} from '../plugin'
import type { CreateHttpClientOptions } from '../lib/types'
import './helpers/fastify-types'
import { type Handler, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'
import { dispatcherOption } from './helpers/dispatcher'

async function setup (t: Test, handler: Handler, options: Partial<CreateHttpClientOptions> = {}): Promise<{ upstream: Upstream, client: HttpClient }> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'catalog', baseUrl: `${upstream.url}/api`, retry: false, ...dispatcherOption(), ...options })
  t.teardown(() => client.close())
  return { upstream, client }
}

/** `size` ASCII bytes whose every 10-byte slice names its offset, so a cut is easy to check. */
function markedBody (size: number): string {
  let out = ''
  for (let i = 0; out.length < size; i += 10) out += `<${String(i).padStart(8, '0')}>`
  return out.slice(0, size)
}

/** Answers with a body in chunks and no content-length (chunked encoding). */
function sendChunked (res: ServerResponse, status: number, body: string, chunkSize = 64): void {
  res.writeHead(status, { 'content-type': 'text/plain' })
  for (let i = 0; i < body.length; i += chunkSize) res.write(body.slice(i, i + chunkSize))
  res.end()
}

function sendText (res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

interface Product {
  id: number
  name: string
  tags: string[]
}

test('a 2xx response: status, headers, attempts and json<T>()', async (t) => {
  const { client } = await setup(t, (_req, res) => sendJson(res, 201, { id: 7, name: 'lamp', tags: ['a', 'b'] }, { 'x-version': '42' }))
  const res = await client.post('/products', { json: { name: 'lamp' } })
  t.type(res, HttpResponse)
  t.equal(res.ok, true)
  t.equal(res.statusCode, 201)
  t.equal(res.headers['x-version'], '42')
  t.equal(res.headers['content-type'], 'application/json')
  t.equal(res.attempts, 1)
  const product = await res.json<Product>()
  t.same(product, { id: 7, name: 'lamp', tags: ['a', 'b'] })
  t.equal(product.tags.length, 2)
})

test('text() and arrayBuffer()', async (t) => {
  const bytes = Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255])
  const { client } = await setup(t, (_req, res, hit) => {
    if (hit.url.endsWith('/text')) return sendText(res, 200, 'héllo wörld')
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length })
    res.end(bytes)
  })
  t.equal(await (await client.get('/text')).text(), 'héllo wörld')
  const buffer = await (await client.get('/bytes')).arrayBuffer()
  t.type(buffer, ArrayBuffer)
  t.equal(buffer.byteLength, bytes.length)
  t.same(Buffer.from(buffer), bytes)
})

test('the body stream can be read with for await', async (t) => {
  const { client } = await setup(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    for (let i = 0; i < 5; i++) {
      res.write(`line ${i}\n`)
      await sleep(5)
    }
    res.end()
  })
  const res = await client.get('/stream')
  t.equal(res.headers['transfer-encoding'], 'chunked')
  const chunks: Buffer[] = []
  for await (const chunk of res.body) chunks.push(chunk as Buffer)
  t.ok(chunks.length >= 1)
  t.equal(Buffer.concat(chunks).toString(), 'line 0\nline 1\nline 2\nline 3\nline 4\n')
})

test('attempts counts the retries behind a response', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, _hit, index) => {
    if (index < 2) return sendJson(res, 503, { busy: index })
    sendJson(res, 200, { done: true })
  }, { retry: { maxAttempts: 3, backoffInitialMs: 1, backoffMaxMs: 1 }, circuitBreaker: false })
  const res = await client.get('/busy')
  t.equal(res.ok, true)
  t.equal(res.attempts, 3)
  t.same(await res.json(), { done: true })
  t.equal(upstream.hits.length, 3)
})

test('a non-2xx response resolves; raiseForStatus() throws HttpStatusError', async (t) => {
  const { client } = await setup(t, (_req, res) => sendJson(res, 404, { error: 'no such item' }))
  const res = await client.delete('/items/7', { query: { force: true } })
  t.equal(res.ok, false)
  t.equal(res.statusCode, 404)
  t.equal(res.attempts, 1)
  const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
  t.type(error, HttpStatusError)
  t.type(error, HttpClientError)
  t.equal(error.code, 'FRH_HTTP_STATUS')
  t.equal(error.upstreamStatusCode, 404)
  t.equal(error.statusCode, 502, 'a gateway answers 502, never the upstream status')
  t.equal(error.response, res)
  t.equal(error.clientName, 'catalog')
  t.equal(error.method, 'DELETE')
  t.equal(error.path, '/items/7')
  t.equal(error.attempts, 1)
  t.equal(error.body, '{"error":"no such item"}')
  t.match(error.message, /catalog/)
  t.match(error.message, /404/)
  // The body is still there to read, whole.
  t.same(await res.json(), { error: 'no such item' })
})

test('raiseForStatus() quotes the first KiB; text() still returns the whole body', async (t) => {
  const body = markedBody(5 * 1024)
  const { client } = await setup(t, (_req, res) => sendText(res, 500, body))
  const res = await client.get('/report')
  t.equal(res.statusCode, 500)
  const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
  t.type(error, HttpStatusError)
  t.equal(error.body.length, 1024)
  t.equal(error.body, body.slice(0, 1024))
  t.ok(error.message.length < 1024, 'the message itself stays short')
  const text = await res.text()
  t.equal(text.length, 5 * 1024)
  t.equal(text, body)
})

test('a chunked non-2xx body is quoted too', async (t) => {
  const body = markedBody(3000)
  const { client } = await setup(t, (_req, res) => sendChunked(res, 502, body, 100))
  const res = await client.get('/gateway')
  t.equal(res.headers['content-length'], undefined)
  const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
  t.equal(error.upstreamStatusCode, 502)
  t.equal(error.body, body.slice(0, 1024))
  t.equal(await res.text(), body)
})

test('an empty non-2xx body is quoted as an empty string', async (t) => {
  const { client } = await setup(t, (_req, res) => {
    res.writeHead(409)
    res.end()
  })
  const res = await client.put('/items/1', { json: {} })
  const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
  t.equal(error.upstreamStatusCode, 409)
  t.equal(error.body, '')
  t.equal(error.method, 'PUT')
})

test('after the last retry, the response of the final attempt is the one quoted', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, _hit, index) => sendText(res, 503, `attempt ${index + 1}`),
    { retry: { maxAttempts: 3, backoffInitialMs: 1, backoffMaxMs: 1, respectRetryAfter: false }, circuitBreaker: false })
  const res = await client.get('/flaky')
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 3)
  t.equal(upstream.hits.length, 3)
  const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
  t.equal(error.body, 'attempt 3')
  t.equal(error.attempts, 3)
  t.equal(await res.text(), 'attempt 3')
})

test('raiseForStatus() returns the response when ok', async (t) => {
  const upstream = await startUpstream((_req, res) => sendJson(res, 200, { total: 3 }))
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { cart: { baseUrl: upstream.url } } })
  const res = await app.httpClients.cart.get('/total')
  t.equal(res.raiseForStatus(), res)
  t.same(await res.raiseForStatus().json(), { total: 3 })
  app.get('/proxy', async (request) => (await request.server.httpClients.cart.get('/total')).raiseForStatus().json())
  const reply = await app.inject('/proxy')
  t.same(reply.json(), { total: 3 })
})

test('maxResponseBytes', async (t) => {
  const LIMIT = 1000
  const over = markedBody(LIMIT + 1)
  const exact = markedBody(LIMIT)
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    const [, kind, status] = hit.url.split('/').slice(1)
    const body = kind.startsWith('over') ? over : exact
    if (kind.endsWith('chunked')) sendChunked(res, Number(status), body, 100)
    else sendText(res, Number(status), body)
  }, { maxResponseBytes: LIMIT })

  function assertTooLarge (t: Test, error: unknown, path: string): void {
    t.type(error, ResponseTooLargeError, path)
    t.type(error, HttpClientError)
    const e = error as ResponseTooLargeError
    t.equal(e.code, 'FRH_RESPONSE_TOO_LARGE')
    t.equal(e.limit, LIMIT)
    t.equal(e.clientName, 'catalog')
    t.equal(e.method, 'GET')
    t.equal(e.path, path)
  }

  t.test('a 2xx whose content-length is over the limit fails the call at once', async (t) => {
    assertTooLarge(t, await rejection(client.get('/over/200')), '/over/200')
  })

  t.test('a chunked 2xx over the limit fails when read', async (t) => {
    const path = '/over-chunked/200'
    for (const read of ['json', 'text', 'arrayBuffer'] as const) {
      const res = await client.get(path)
      t.equal(res.statusCode, 200)
      t.equal(res.headers['transfer-encoding'], 'chunked')
      assertTooLarge(t, await rejection(res[read]()), path)
    }
  })

  t.test('a non-2xx over the limit rejects the call', async (t) => {
    for (const path of ['/over/404', '/over-chunked/404', '/over/500', '/over-chunked/500']) {
      assertTooLarge(t, await rejection(client.get(path)), path)
    }
  })

  t.test('a body at the limit is read whole', async (t) => {
    t.equal(await (await client.get('/exact/200')).text(), exact)
    t.equal(await (await client.get('/exact-chunked/200')).text(), exact)
    t.equal((await (await client.get('/exact/200')).arrayBuffer()).byteLength, LIMIT)
    const res = await client.get('/exact-chunked/404')
    t.equal(res.statusCode, 404)
    const error = t.throws(() => res.raiseForStatus()) as HttpStatusError
    t.equal(error.body, exact.slice(0, 1024))
    t.equal(await res.text(), exact)
  })

  t.test('the client keeps working after a body that was too large', async (t) => {
    const before = upstream.hits.length
    assertTooLarge(t, await rejection(client.get('/over/404')), '/over/404')
    const res = await client.get('/exact/200')
    t.equal(await res.text(), exact)
    t.equal(upstream.hits.length, before + 2)
    t.equal(client.stats().inFlight, 0)
  })
})

test('a small body under a small limit works; one byte over fails', async (t) => {
  const { client } = await setup(t, (_req, res, hit) => sendJson(res, 200, hit.url.endsWith('/small') ? { a: 1 } : { a: 123 }), { maxResponseBytes: 8 })
  t.same(await (await client.get('/small')).json(), { a: 1 })
  const error = await rejection(client.get('/big'))
  t.type(error, ResponseTooLargeError)
  t.equal((error as ResponseTooLargeError).limit, 8)
})

test('a HEAD answer announcing a body over maxResponseBytes is not too large: it carries none', async (t) => {
  const { client } = await setup(t, (_req, res) => {
    res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 5000 })
    res.end()
  }, { maxResponseBytes: 100 })
  const res = await client.head('/missing')
  t.equal(res.statusCode, 404)
  t.equal(res.headers['content-length'], '5000')
  t.equal(await res.text(), '')
  const error = await rejection(client.get('/missing'))
  t.ok(error instanceof ResponseTooLargeError, 'a GET with the same announced length is refused')
})
