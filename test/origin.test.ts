import Fastify from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import resilientHttp, { createHttpClient, HttpClientError, InvalidRequestError } from '../plugin'
import type { CallOptions, ClientOptions } from '../lib/types'
import './helpers/fastify-types'
import { sendJson, startUpstream, rejection, type Upstream } from './helpers/upstream'

/** A server that counts connections; nothing should ever reach it. */
async function startDecoy (): Promise<Upstream & { host: string }> {
  const decoy = await startUpstream((_req, res) => { res.end('decoy') })
  return { ...decoy, host: `127.0.0.1:${decoy.port}` }
}

test('every way out of the origin is refused before anything is sent', async (t) => {
  const decoy = await startDecoy()
  t.teardown(() => decoy.close())
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { url: hit.url }))
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'users', baseUrl: `${upstream.url}/v1`, retry: false })
  t.teardown(() => client.close())

  const decoyHost = decoy.host
  const paths: Array<[string, unknown]> = [
    ['absolute http URL', `http://${decoyHost}/steal`],
    ['absolute https URL', `https://${decoyHost}/steal`],
    ['absolute URL with a leading space', ` http://${decoyHost}/steal`],
    ['protocol-relative', `//${decoyHost}/steal`],
    ['protocol-relative, three slashes', `///${decoyHost}/steal`],
    ['slash backslash', `/\\${decoyHost}/steal`],
    ['two backslashes', `\\\\${decoyHost}\\steal`],
    ['backslash in the middle', '/a\\..\\..\\steal'],
    ['backslash at the end', '/steal\\'],
    ['user info', `@${decoyHost}/steal`],
    ['CR LF splitting the request', `/ok HTTP/1.1\r\nHost: ${decoyHost}\r\n\r\nGET /steal`],
    ['LF only', '/ok\nHost: decoy'],
    ['CR only', '/ok\rX: y'],
    ['CR LF at the end', '/ok\r\n'],
    ['space', '/a b'],
    ['tab', '/a\tb'],
    ['NUL', '/a\u0000b'],
    ['no leading slash', 'steal'],
    ['relative dot path', '../steal'],
    ['dot-dot segment climbing out of the base path', '/../admin'],
    ['encoded dot-dot', '/%2e%2e/admin'],
    ['dot-dot before an encoded slash', '/..%2fadmin'],
    ['fragment', '/ok#frag'],
    ['NBSP', '/ok\u00a0x'],
    ['C1 control', '/ok\u0085x'],
    ['lone percent', '/ok%'],
    ['empty path', ''],
    ['a number', 42],
    ['undefined', undefined],
    ['null', null],
    ['an object', { toString: () => '/steal' }],
    ['a URL object', new URL(`http://${decoyHost}/steal`)]
  ]
  for (const [description, path] of paths) {
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['get', () => client.get(path as string)],
      ['post with json', () => client.post(path as string, { json: { a: 1 } })],
      ['delete with options', () => client.delete(path as string, { headers: { 'x-a': '1' } })],
      ['request()', () => client.request({ method: 'PUT', path: path as string, body: 'x' })]
    ]
    for (const [how, call] of calls) {
      const error = await rejection(call())
      t.type(error, InvalidRequestError, `${description} via ${how}`)
      t.type(error, HttpClientError)
      t.equal((error as InvalidRequestError).code, 'FRH_INVALID_REQUEST', `${description} via ${how}: code`)
      t.equal((error as InvalidRequestError).clientName, 'users')
    }
  }

  const headerEscapes: Array<[string, CallOptions]> = [
    ['header value with CR LF', { headers: { 'x-note': `a\r\nHost: ${decoyHost}` } }],
    ['header value with LF', { headers: { 'x-note': 'a\nb' } }],
    ['header value with CR', { headers: { 'x-note': 'a\rb' } }],
    ['header value with NUL', { headers: { 'x-note': 'a\u0000b' } }],
    ['one of several values with LF', { headers: { 'x-note': ['ok', 'a\nb'] } }],
    ['header name with CR LF', { headers: { 'x-a\r\nx-b': 'v' } }],
    ['header name with a space', { headers: { 'x a': 'v' } }],
    ['header name with a colon', { headers: { 'host:': 'v' } }],
    ['Idempotency-Key header with CR LF', { headers: { 'Idempotency-Key': 'k\r\nx: y' } }],
    ['idempotencyKey with CR LF', { idempotencyKey: `k\r\nHost: ${decoyHost}` }],
    ['idempotencyKey with LF', { idempotencyKey: 'k\n' }],
    ['idempotencyKey empty', { idempotencyKey: '' }],
    ['idempotencyKey a number', { idempotencyKey: 7 as unknown as string }],
    ['headers not an object', { headers: 'x-a: 1' as never }]
  ]
  for (const [description, options] of headerEscapes) {
    const error = await rejection(client.post('/ok', options))
    t.type(error, InvalidRequestError, description)
    t.equal((error as InvalidRequestError).code, 'FRH_INVALID_REQUEST', `${description}: code`)
    t.equal((error as InvalidRequestError).method, 'POST')
    t.equal((error as InvalidRequestError).path, '/ok')
  }

  // Give any stray connection time to land before counting.
  await sleep(50)
  t.equal(decoy.connections(), 0, 'the decoy saw no connection')
  t.equal(upstream.connections(), 0, 'the upstream saw no connection')
  t.equal(upstream.hits.length, 0, 'the upstream saw no request')
  t.equal(client.stats().requests, 0, 'no call was started')

  // The same client still works, and the counters above do count.
  const res = await client.get('/ok')
  t.same(await res.json(), { url: '/v1/ok' })
  t.equal(upstream.connections(), 1)
  t.equal(decoy.connections(), 0)
})

test('a path that is not a string rejects, never throws, on a fresh client, with a token and from stream()', async (t) => {
  const upstream = await startUpstream((_req, res) => sendJson(res, 200, {}))
  t.teardown(() => upstream.close())
  const notStrings: unknown[] = [null, undefined, 42, { toString: () => '/ok' }]
  const clientOptions: Array<[string, Partial<ClientOptions>]> = [['plain', {}], ['auth.token', { auth: { token: () => 'sk_1' } }]]
  for (const [kind, options] of clientOptions) {
    for (const path of notStrings) {
      // A fresh client for each value: nothing it remembers may let one through.
      const client = createHttpClient({ name: 'users', baseUrl: upstream.url, retry: false, ...options })
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['get', () => client.get(path as string)],
        ['get with options', () => client.get(path as string, {})],
        ['stream', () => client.stream(path as string)],
        ['stream with options', () => client.stream(path as string, { idleTimeout: 1000 })]
      ]
      for (const [how, call] of calls) {
        let promise: Promise<unknown> | undefined
        t.doesNotThrow(() => { promise = call() }, `${kind}: ${String(path)} via ${how} does not throw`)
        const error = await rejection(promise ?? Promise.resolve())
        t.type(error, InvalidRequestError, `${kind}: ${String(path)} via ${how} rejects`)
      }
      t.equal(client.stats().requests, 0)
      await client.close()
    }
  }
  t.equal(upstream.hits.length, 0, 'the upstream saw no request')
})

test('a route that passes a caller-chosen path cannot reach another host', async (t) => {
  const decoy = await startDecoy()
  t.teardown(() => decoy.close())
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { url: hit.url }))
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { files: { baseUrl: `${upstream.url}/files` } } })
  app.get('/fetch', async (request) => {
    const { path } = request.query as { path: string }
    try {
      const res = await app.httpClients.files.get(path)
      return { ok: true, upstream: await res.json() }
    } catch (error) {
      return { ok: false, code: (error as HttpClientError).code }
    }
  })
  for (const path of [`//${decoy.host}/x`, `http://${decoy.host}/x`, `/\\${decoy.host}/x`, '/x\r\nHost: evil']) {
    const reply = await app.inject({ url: '/fetch', query: { path } })
    t.same(reply.json(), { ok: false, code: 'FRH_INVALID_REQUEST' }, JSON.stringify(path))
  }
  const reply = await app.inject({ url: '/fetch', query: { path: '/report.txt' } })
  t.same(reply.json(), { ok: true, upstream: { url: '/files/report.txt' } })
  t.equal(decoy.connections(), 0)
  t.equal(upstream.hits.length, 1)
})

test('paths join the base path', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { url: hit.url }))
  t.teardown(() => upstream.close())
  const cases: Array<[NonNullable<ClientOptions['baseUrl']>, string, string]> = [
    [`${upstream.url}/v1`, '/charge', '/v1/charge'],
    [new URL(`${upstream.url}/v1/`), '/charge', '/v1/charge'],
    [[`${upstream.url}/v1`], '/charge', '/v1/charge'],
    [`${upstream.url}/v1/`, '/charge', '/v1/charge'],
    [`${upstream.url}/api/v2`, '/users/42', '/api/v2/users/42'],
    [upstream.url, '/charge', '/charge'],
    [`${upstream.url}/`, '/charge', '/charge'],
    [`${upstream.url}/v1`, '/', '/v1/'],
    [`${upstream.url}/v1`, '/a/..b/.c', '/v1/a/..b/.c'],
    [`${upstream.url}/v1`, '/users/José', '/v1/users/Jos%C3%A9'],
    [`${upstream.url}/v1`, '/a%20b', '/v1/a%20b'],
    [`${upstream.url}/v1`, '/%2F%2Fhost', '/v1/%2F%2Fhost']
  ]
  for (const [baseUrl, path, expected] of cases) {
    const client = createHttpClient({ name: 'payments', baseUrl, retry: false })
    t.teardown(() => client.close())
    const res = await client.get(path)
    t.same(await res.json(), { url: expected }, `${path} on ${String(baseUrl)}`)
  }
  t.equal(upstream.hits.length, cases.length)
})

test('query strings', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { url: hit.url }))
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'search', baseUrl: `${upstream.url}/v1`, retry: false })
  t.teardown(() => client.close())
  const cases: Array<[string, CallOptions['query'], string]> = [
    ['/search', { q: 'fastify', page: 2, exact: true }, '/v1/search?q=fastify&page=2&exact=true'],
    ['/search', { tag: ['a', 'b', 'c'] }, '/v1/search?tag=a&tag=b&tag=c'],
    ['/search', { tag: ['a', undefined, 'b'], n: 1 }, '/v1/search?tag=a&tag=b&n=1'],
    ['/search', { a: undefined, b: 'x' }, '/v1/search?b=x'],
    ['/search', { a: undefined }, '/v1/search'],
    ['/search', {}, '/v1/search'],
    ['/search', { tag: [] }, '/v1/search'],
    ['/search', { q: 'a b&c=d', 'k y': 'é/?#' }, '/v1/search?q=a%20b%26c%3Dd&k%20y=%C3%A9%2F%3F%23'],
    ['/search', { q: 'a\r\nHost: evil' }, '/v1/search?q=a%0D%0AHost%3A%20evil'],
    ['/search?x=1', { y: 2 }, '/v1/search?x=1&y=2'],
    ['/search?x=1', { y: [2, 3] }, '/v1/search?x=1&y=2&y=3'],
    ['/search?x=1', { y: undefined }, '/v1/search?x=1'],
    ['/search?x=1', undefined, '/v1/search?x=1']
  ]
  for (const [path, query, expected] of cases) {
    const res = await client.get(path, { query })
    t.same(await res.json(), { url: expected }, `${path} with ${JSON.stringify(query)}`)
  }
  t.equal(upstream.hits.length, cases.length)
  const error = await rejection(client.get('/search', { query: 'q=1' as never }))
  t.type(error, InvalidRequestError)
  t.equal(upstream.hits.length, cases.length)
})
