import { Readable } from 'node:stream'
import { test, type Test } from 'tap'
import { UpstreamError } from '../lib/errors'
import { type HttpClient } from '../lib/api/http-client'
import type { ClientOptions } from '../lib/types'
import { clientFor, type Handler, sendJson, refusedPort, rejection, upstreamFor } from './helpers/upstream'

/** Timeouts that only a hung call reaches, so a busy machine cannot fail these tests. */
const PATIENT = { timeout: 60_000, totalTimeout: 120_000 }

const QUICK = { backoffInitialMs: 1, backoffMaxMs: 2, jitter: 'none' } as const
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

function svcClient (t: Test, baseUrl: string, retry: ClientOptions['retry'] = QUICK): HttpClient {
  return clientFor(t, { name: 'svc', baseUrl, circuitBreaker: false, retry, ...PATIENT })
}

/** Answers `status` to the first `failures` hits, then 200. */
function failing (status: number, failures: number): Handler {
  return (_req, res, _hit, index) => {
    if (index < failures) sendJson(res, status, { error: status })
    else sendJson(res, 200, { ok: true })
  }
}

/** Reads the whole request, then drops the connection without answering, `failures` times; then 200. */
function resetting (failures: number): Handler {
  return (req, res, _hit, index) => {
    if (index < failures) req.socket.destroy()
    else sendJson(res, 200, { ok: true })
  }
}

test('a POST without a key is sent once on a 503 and resolves with it', async (t) => {
  const upstream = await upstreamFor(t, failing(503, 5))
  const client = svcClient(t, upstream.url)
  const res = await client.post('/charge', { json: { amount: 1 } })
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 1)
  t.same(await res.json(), { error: 503 })
  t.equal(upstream.hits.length, 1)
})

test('a POST whose connection drops after it was written is sent once and rejects', async (t) => {
  const upstream = await upstreamFor(t, resetting(5))
  const client = svcClient(t, upstream.url)
  const error = await rejection(client.post('/charge', { json: { amount: 1 } }))
  t.ok(error instanceof UpstreamError, 'UpstreamError')
  t.equal((error as UpstreamError).attempts, 1)
  t.equal(upstream.hits.length, 1)
  t.equal(upstream.hits[0].body, '{"amount":1}', 'the upstream did read it')
})

test('a POST is retried when the connection was refused: it never left', async (t) => {
  const port = await refusedPort()
  const client = svcClient(t, `http://127.0.0.1:${port}`)
  const error = await rejection(client.post('/charge', { json: { amount: 1 } }))
  t.ok(error instanceof UpstreamError)
  t.equal((error as UpstreamError).attempts, 3)
  t.equal(((error as UpstreamError).cause as { code?: string }).code, 'ECONNREFUSED')
})

test('a POST is retried on a 429: the upstream refused it unprocessed', async (t) => {
  const upstream = await upstreamFor(t, failing(429, 2))
  const client = svcClient(t, upstream.url)
  const res = await client.post('/charge', { json: { amount: 1 } })
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  t.equal(upstream.hits.length, 3)
})

test('idempotencyKey: true sends one generated key, the same on every attempt', async (t) => {
  const upstream = await upstreamFor(t, failing(503, 2))
  const client = svcClient(t, upstream.url)
  const res = await client.post('/charge', { json: { amount: 1 }, idempotencyKey: true })
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  const keys = upstream.hits.map((hit) => hit.headers['idempotency-key'])
  t.equal(keys.length, 3)
  t.match(keys[0], UUID_V4)
  t.same(keys, [keys[0], keys[0], keys[0]])

  const other = await client.post('/charge', { json: { amount: 1 }, idempotencyKey: true })
  t.equal(other.attempts, 1)
  t.not(upstream.hits[3].headers['idempotency-key'], keys[0], 'each call has its own key')
})

test('a given idempotencyKey string is sent on every attempt', async (t) => {
  const upstream = await upstreamFor(t, failing(503, 1))
  const client = svcClient(t, upstream.url)
  const res = await client.patch('/order/1', { json: { state: 'paid' }, idempotencyKey: 'order-1-paid' })
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 2)
  t.same(upstream.hits.map((hit) => hit.headers['idempotency-key']), ['order-1-paid', 'order-1-paid'])
})

test("a caller's own Idempotency-Key header makes a POST retryable and is sent unchanged", async (t) => {
  const upstream = await upstreamFor(t, failing(503, 2))
  const client = svcClient(t, upstream.url)
  const res = await client.post('/charge', { json: { amount: 1 }, headers: { 'Idempotency-Key': 'Caller-Key-42' } })
  t.equal(res.statusCode, 200)
  t.equal(res.attempts, 3)
  t.same(upstream.hits.map((hit) => hit.headers['idempotency-key']), ['Caller-Key-42', 'Caller-Key-42', 'Caller-Key-42'])

  const both = await client.post('/charge', { json: { amount: 1 }, headers: { 'idempotency-key': 'Caller-Key-43' }, idempotencyKey: true })
  t.equal(both.attempts, 1)
  t.equal(upstream.hits[3].headers['idempotency-key'], 'Caller-Key-43', "the caller's key wins, alone")
})

test('retryNonIdempotent: true retries a POST on a 503 and on a drop', async (t) => {
  t.test('503', async (t) => {
    const upstream = await upstreamFor(t, failing(503, 2))
    const client = svcClient(t, upstream.url, { ...QUICK, retryNonIdempotent: true })
    const res = await client.post('/charge', { json: { amount: 1 } })
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 3)
    t.equal(upstream.hits.length, 3)
  })
  t.test('dropped connection', async (t) => {
    const upstream = await upstreamFor(t, resetting(1))
    const client = svcClient(t, upstream.url, { ...QUICK, retryNonIdempotent: true })
    const res = await client.post('/charge', { json: { amount: 1 } })
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 2)
  })
  t.test('per call', async (t) => {
    const upstream = await upstreamFor(t, failing(503, 1))
    const client = svcClient(t, upstream.url)
    const res = await client.post('/charge', { json: { amount: 1 }, retry: { retryNonIdempotent: true } })
    t.equal(res.attempts, 2)
  })
})

test('PATCH is treated like POST', async (t) => {
  t.test('a 503 without a key: once', async (t) => {
    const upstream = await upstreamFor(t, failing(503, 5))
    const client = svcClient(t, upstream.url)
    const res = await client.patch('/order/1', { json: { state: 'paid' } })
    t.equal(res.statusCode, 503)
    t.equal(res.attempts, 1)
    t.equal(upstream.hits.length, 1)
  })
  t.test('a drop without a key: once, rejects', async (t) => {
    const upstream = await upstreamFor(t, resetting(5))
    const client = svcClient(t, upstream.url)
    const error = await rejection(client.patch('/order/1', { json: { state: 'paid' } }))
    t.ok(error instanceof UpstreamError)
    t.equal(upstream.hits.length, 1)
  })
  t.test('a 429: retried', async (t) => {
    const upstream = await upstreamFor(t, failing(429, 1))
    const client = svcClient(t, upstream.url)
    const res = await client.patch('/order/1', { json: { state: 'paid' } })
    t.equal(res.attempts, 2)
  })
  t.test('a refused connection: retried', async (t) => {
    const port = await refusedPort()
    const client = svcClient(t, `http://127.0.0.1:${port}`)
    const error = await rejection(client.patch('/order/1', { json: { state: 'paid' } }))
    t.equal((error as UpstreamError).attempts, 3)
  })
})

test('PUT, DELETE and GET are retried on a 503 and on a dropped connection', async (t) => {
  const send = (client: HttpClient, method: string): Promise<unknown> => method === 'GET'
    ? client.get('/thing')
    : client.request({ method, path: '/thing', json: { v: 1 } })
  for (const method of ['PUT', 'DELETE', 'GET']) {
    t.test(`${method} on 503`, async (t) => {
      const upstream = await upstreamFor(t, failing(503, 2))
      const client = svcClient(t, upstream.url)
      const res = await send(client, method) as { statusCode: number, attempts: number }
      t.equal(res.statusCode, 200)
      t.equal(res.attempts, 3)
      t.same(upstream.hits.map((hit) => hit.method), [method, method, method])
    })
    t.test(`${method} on a drop`, async (t) => {
      const upstream = await upstreamFor(t, resetting(2))
      const client = svcClient(t, upstream.url)
      const res = await send(client, method) as { statusCode: number, attempts: number }
      t.equal(res.statusCode, 200)
      t.equal(res.attempts, 3)
      t.equal(upstream.hits.length, 3)
    })
  }
  t.test('HEAD and OPTIONS on 503', async (t) => {
    const upstream = await upstreamFor(t, failing(503, 2))
    const client = svcClient(t, upstream.url)
    t.equal((await client.head('/thing')).attempts, 3)
    t.equal((await client.options('/thing')).attempts, 1, 'the 503s were used up by HEAD')
    t.same(upstream.hits.map((hit) => hit.method), ['HEAD', 'HEAD', 'HEAD', 'OPTIONS'])
  })
})

test('a stream body is sent once, even with an idempotency key', async (t) => {
  const upstream = await upstreamFor(t, failing(503, 5))
  const client = svcClient(t, upstream.url)
  const body = Readable.from([Buffer.from('part one, '), Buffer.from('part two')])
  const res = await client.post('/upload', { body, idempotencyKey: true })
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 1)
  t.equal(upstream.hits.length, 1)
  t.equal(upstream.hits[0].body, 'part one, part two')
})

test('a stream body on an idempotent method is not replayed either', async (t) => {
  const upstream = await upstreamFor(t, failing(503, 5))
  const client = svcClient(t, upstream.url)
  const res = await client.put('/upload', { body: Readable.from([Buffer.from('data')]) })
  t.equal(res.statusCode, 503)
  t.equal(res.attempts, 1)
  t.equal(upstream.hits.length, 1)
})

test('string, Buffer, Uint8Array and json bodies are replayed byte for byte', async (t) => {
  const text = 'héllo wörld ✓ — ' + 'x'.repeat(10_000)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['string', { body: text }, text],
    ['Buffer', { body: Buffer.from(text) }, text],
    ['Uint8Array', { body: new Uint8Array(Buffer.from(text)) }, text],
    ['json', { json: { text, n: [1, 2, 3] } }, JSON.stringify({ text, n: [1, 2, 3] })]
  ]
  for (const [kind, options, expected] of cases) {
    t.test(kind, async (t) => {
      const upstream = await upstreamFor(t, failing(503, 2))
      const client = svcClient(t, upstream.url)
      const res = await client.post('/doc', { ...options, idempotencyKey: true })
      t.equal(res.attempts, 3)
      t.equal(upstream.hits.length, 3)
      for (const hit of upstream.hits) {
        t.equal(hit.body, expected)
        t.equal(hit.headers['content-length'], String(Buffer.byteLength(expected)))
      }
      if (kind === 'json') t.same(upstream.hits.map((hit) => hit.headers['content-type']), Array(3).fill('application/json'))
    })
  }
})
