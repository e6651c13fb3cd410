import Fastify, { type FastifyInstance } from 'fastify'
import multipart from '@fastify/multipart'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { test, type Test } from 'tap'
import { FormData as UndiciFormData } from 'undici'
import { createHttpClient, type HttpClient, InvalidRequestError } from '../plugin'
import type { CreateHttpClientOptions } from '../lib/types'
import { dispatcherOption } from './helpers/dispatcher'
import { type Handler, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'

function ok (_req: unknown, res: Parameters<Handler>[1]): void {
  sendJson(res, 200, { ok: true })
}

async function setup (t: Test, handler: Handler = ok, options: Partial<CreateHttpClientOptions> = {}): Promise<{ upstream: Upstream, client: HttpClient }> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'svc', baseUrl: `${upstream.url}/v1`, retry: false, ...dispatcherOption(), ...options })
  t.teardown(() => client.close())
  return { upstream, client }
}

interface Part { field: string, value?: string, filename?: string, mimetype?: string, content?: string }
interface Received { parts: Part[], contentType: string, contentLength: string | undefined }

/** A Fastify upstream that reads multipart uploads with @fastify/multipart; the first `failFirst` uploads are read whole, then answered 503. */
async function multipartUpstream (t: Test, failFirst = 0): Promise<{ url: string, received: Received[] }> {
  const app: FastifyInstance = Fastify()
  await app.register(multipart)
  const received: Received[] = []
  app.post('/v1/upload', async (request, reply) => {
    const parts: Part[] = []
    for await (const part of request.parts()) {
      if (part.type === 'file') {
        parts.push({ field: part.fieldname, filename: part.filename, mimetype: part.mimetype, content: (await part.toBuffer()).toString('utf8') })
      } else {
        parts.push({ field: part.fieldname, value: String(part.value) })
      }
    }
    received.push({ parts, contentType: String(request.headers['content-type']), contentLength: request.headers['content-length'] })
    if (received.length <= failFirst) return reply.code(503).send({ busy: true })
    return { files: parts.filter((part) => part.filename !== undefined).length }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return { url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1`, received }
}

test('form: a Stripe-style call is sent url-encoded, arrays repeating their key', async (t) => {
  const { upstream, client } = await setup(t)
  const res = await client.post('/charges', {
    form: { amount: 2000, currency: 'usd', capture: false, 'metadata[order_id]': '6735 & co', 'expand[]': ['customer', 'invoice'], skipped: undefined },
    idempotencyKey: 'order-6735'
  })
  t.equal(res.statusCode, 200)
  const hit = upstream.hits[0]
  t.equal(hit.headers['content-type'], 'application/x-www-form-urlencoded')
  t.equal(hit.body, 'amount=2000&currency=usd&capture=false&metadata%5Border_id%5D=6735+%26+co&expand%5B%5D=customer&expand%5B%5D=invoice')
  t.equal(hit.headers['content-length'], String(Buffer.byteLength(hit.body)))
  const parsed = new URLSearchParams(hit.body)
  t.same(parsed.getAll('expand[]'), ['customer', 'invoice'])
  t.equal(parsed.get('metadata[order_id]'), '6735 & co')
  t.equal(hit.headers['idempotency-key'], 'order-6735')
})

test('form and body as URLSearchParams are the same form; a call\'s content type wins', async (t) => {
  const { upstream, client } = await setup(t)
  const params = new URLSearchParams([['a', '1'], ['a', '2'], ['b', 'x y']])
  await client.post('/f', { form: params })
  await client.post('/b', { body: params })
  await client.put('/c', { form: { a: 1 }, headers: { 'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8' } })
  t.same(upstream.hits.map((hit) => hit.body), ['a=1&a=2&b=x+y', 'a=1&a=2&b=x+y', 'a=1'])
  t.same(upstream.hits.map((hit) => hit.headers['content-type']), [
    'application/x-www-form-urlencoded', 'application/x-www-form-urlencoded', 'application/x-www-form-urlencoded; charset=utf-8'
  ])
})

test('ArrayBuffer, Blob and File bodies: bytes as given, the Blob\'s type as content type, a length always', async (t) => {
  const { upstream, client } = await setup(t)
  await client.post('/ab', { body: new TextEncoder().encode('array ✓ buffer').buffer })
  await client.post('/blob', { body: new Blob(['{"a":', '1}'], { type: 'application/json' }) })
  await client.post('/file', { body: new File(['name,qty\nnut,3\n'], 'stock.csv', { type: 'text/csv' }) })
  await client.post('/untyped', { body: new Blob(['raw']) })
  await client.post('/own', { body: new Blob(['<a/>'], { type: 'text/xml' }), headers: { 'content-type': 'application/xml' } })
  t.same(upstream.hits.map((hit) => hit.body), ['array ✓ buffer', '{"a":1}', 'name,qty\nnut,3\n', 'raw', '<a/>'])
  t.same(upstream.hits.map((hit) => hit.headers['content-type']), [undefined, 'application/json', 'text/csv', undefined, 'application/xml'])
  t.same(upstream.hits.map((hit) => hit.headers['content-length']), ['16', '7', '15', '3', '4'])
})

for (const [name, Form] of [
  ['Node\'s global FormData', FormData],
  ['undici\'s FormData', UndiciFormData]
] as const) {
  test(`${name}: a Fastify upstream with @fastify/multipart receives the fields and files`, async (t) => {
    const upstream = await multipartUpstream(t)
    const client = createHttpClient({ name: 'files', baseUrl: upstream.url, ...dispatcherOption() })
    t.teardown(() => client.close())
    const form = new Form()
    form.append('title', 'Quarterly report ✓')
    form.append('tags', 'a')
    form.append('tags', 'b')
    form.append('report', new File(['x'.repeat(100_000), 'end'], 'report.txt', { type: 'text/plain' }))
    form.append('raw', new Blob([Buffer.from([1, 2, 3])]), 'raw.bin')
    const first = await client.post('/upload', { body: form as FormData })
    const second = await client.post('/upload', { body: form as FormData })
    t.same(await first.json(), { files: 2 })
    t.equal(second.statusCode, 200)
    const [one, two] = upstream.received
    t.match(one.parts, [
      { field: 'title', value: 'Quarterly report ✓' },
      { field: 'tags', value: 'a' },
      { field: 'tags', value: 'b' },
      { field: 'report', filename: 'report.txt', mimetype: 'text/plain' },
      { field: 'raw', filename: 'raw.bin', mimetype: 'application/octet-stream' }
    ])
    t.equal(one.parts[3].content, 'x'.repeat(100_000) + 'end')
    t.equal(one.parts[4].content, '\u0001\u0002\u0003')
    t.match(one.contentType, /^multipart\/form-data; boundary=\S+$/)
    t.ok(Number(one.contentLength) > 100_000, 'the length is sent')
    t.not(one.contentType, two.contentType, 'each call has a fresh boundary')
    t.same(two.parts, one.parts)
  })
}

test('a FormData is encoded again for a retry: the upstream gets the whole body twice', async (t) => {
  const upstream = await multipartUpstream(t, 1)
  const client = createHttpClient({ name: 'files', baseUrl: upstream.url, retry: { backoffInitialMs: 1, backoffMaxMs: 1 }, ...dispatcherOption() })
  t.teardown(() => client.close())
  const form = new FormData()
  form.append('doc', new File(['contents'], 'doc.txt', { type: 'text/plain' }))
  const res = await client.post('/upload', { body: form, idempotencyKey: true })
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 2)
  t.equal(upstream.received.length, 2)
  t.same(upstream.received.map((each) => each.parts[0].content), ['contents', 'contents'])
  t.not(upstream.received[0].contentType, upstream.received[1].contentType, 'a fresh boundary per attempt')
})

test('a body function gives each attempt a fresh stream: a stream upload is retried', async (t) => {
  const payload = Array.from({ length: 50 }, (_, i) => `line ${i}\n`)
  const { upstream, client } = await setup(t, (_req, res, _hit, index) => {
    if (index === 0) sendJson(res, 503, { busy: true })
    else sendJson(res, 201, { stored: true })
  }, { retry: { backoffInitialMs: 1, backoffMaxMs: 1 } })
  let calls = 0
  const res = await client.put('/objects/log.txt', {
    body: () => {
      calls++
      return Readable.from(payload.map((line) => Buffer.from(line)))
    },
    headers: { 'content-type': 'text/plain' }
  })
  t.equal(res.statusCode, 201)
  t.equal(res.attempts, 2)
  t.equal(calls, 2, 'called once per attempt')
  t.same(upstream.hits.map((hit) => hit.body), [payload.join(''), payload.join('')])
  t.same(upstream.hits.map((hit) => hit.headers['content-type']), ['text/plain', 'text/plain'])
})

test('a body function\'s result sets the content type and length like a body would', async (t) => {
  const { upstream, client } = await setup(t)
  await client.post('/a', { body: () => new Blob(['{}'], { type: 'application/json' }) })
  await client.post('/b', { body: () => new URLSearchParams({ q: 'x' }) })
  const form = new FormData()
  form.append('f', 'v')
  await client.post('/c', { body: () => form })
  await client.post('/d', { body: () => 'text' })
  t.same(upstream.hits.map((hit) => hit.headers['content-type']?.replace(/boundary=.*/, 'boundary=…')), [
    'application/json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=…', undefined
  ])
  t.same(upstream.hits.map((hit) => hit.headers['content-length']), ['2', '3', String(Buffer.byteLength(upstream.hits[2].body)), '4'])
  t.match(upstream.hits[2].body, /name="f"\r\n\r\nv\r\n/)
})

test('a stream body is sent once: its retry is not made', async (t) => {
  const { upstream, client } = await setup(t, (_req, res) => sendJson(res, 503, {}), { retry: { backoffInitialMs: 1, backoffMaxMs: 1 } })
  async function * chunks (): AsyncGenerator<Uint8Array> {
    yield Buffer.from('once')
  }
  const res = await client.put('/x', { body: chunks() })
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 1)
  t.equal(upstream.hits.length, 1)
  t.equal(upstream.hits[0].headers['transfer-encoding'], 'chunked')
})

test('a body function that throws or returns what cannot be sent fails the call; nothing is sent', async (t) => {
  const { upstream, client } = await setup(t)
  const boom = new Error('no file')
  const thrown = await rejection(client.post('/x', { body: () => { throw boom } })) as InvalidRequestError
  t.type(thrown, InvalidRequestError)
  t.equal(thrown.cause, boom)
  t.match(thrown.message, /body function threw \(its error is the cause\)$/)
  t.notMatch(thrown.message, /no file/, 'the app\'s own error stays on cause')
  const notAnError: unknown = 'not an Error'
  const thrownString = await rejection(client.post('/x', { body: () => { throw notAnError } })) as InvalidRequestError
  t.match(thrownString.message, /body function threw \(its error is the cause\)$/)
  t.equal(thrownString.cause, notAnError)
  const cases: Array<[unknown, RegExp]> = [
    [() => 42, /body\(\) must be .* got the number 42/],
    [() => ({ a: 1 }), /body\(\) must be .* got a plain object/],
    [async () => 'late', /body\(\) must not be a promise/],
    [() => () => 'nested', /body\(\) must be .* got a function/],
    [() => Object.create(Object.create(null)), /body\(\) must be .* got an object/]
  ]
  for (const [body, message] of cases) {
    const error = await rejection(client.post('/x', { body: body as () => string }))
    t.type(error, InvalidRequestError, String(message))
    t.match((error as Error).message, message)
  }
  t.equal(upstream.hits.length, 0)
  t.equal(client.stats().inFlight, 0)
})

test('bodies that cannot be sent are refused by name before anything is sent', async (t) => {
  const { upstream, client } = await setup(t)
  const cases: Array<[() => Promise<unknown>, RegExp]> = [
    [() => client.post('/x', { json: { a: 1 }, body: 'a=1' }), /json and body cannot be used together/],
    [() => client.post('/x', { json: 1, form: { a: 1 } }), /json and form cannot be used together/],
    [() => client.post('/x', { form: { a: 1 }, body: 'a=1' }), /form and body cannot be used together/],
    [() => client.get('/x', { body: 'x' } as never), /body cannot be sent with GET/],
    [() => client.head('/x', { json: {} }), /json cannot be sent with HEAD/],
    [() => client.request({ method: 'get', path: '/x', form: { a: 1 } }), /form cannot be sent with GET/],
    [() => client.post('/x', { body: new Map() as never }), /body must be a string, .* got a Map/],
    [() => client.post('/x', { body: 7 as never }), /got the number 7/],
    [() => client.post('/x', { body: [1, 2] as never }), /got an array/],
    [() => client.post('/x', { body: { a: 1 } as never }), /got a plain object/],
    [() => client.post('/x', { body: Object.create(null) as never }), /got a plain object/],
    [() => client.post('/x', { body: Promise.resolve('x') as never }), /body must not be a promise/],
    [() => client.post('/x', { body: true as never }), /got a boolean/],
    [() => client.post('/x', { form: { a: { b: 1 } } as never }), /form\.a must be a string, a finite number or a boolean, got a plain object/],
    [() => client.post('/x', { form: { a: [1, null] } as never }), /form\.a\.1 must be .* got null/],
    [() => client.post('/x', { form: { n: NaN } }), /form\.n must be .* got the number NaN/],
    [() => client.post('/x', { form: 'a=1' as never }), /form must be an object or a URLSearchParams, got a string/],
    [() => client.post('/x', { followRedirects: -1 }), /followRedirects must be between 0 and 20/]
  ]
  for (const [call, message] of cases) {
    const error = await rejection(call())
    t.type(error, InvalidRequestError, String(message))
    t.match((error as Error).message, message)
  }
  t.equal(upstream.hits.length, 0)
})
