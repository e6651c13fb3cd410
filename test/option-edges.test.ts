import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp, { createHttpClient, InvalidOptionsError, InvalidRequestError } from '../plugin'
import { sendJson, startUpstream, rejection } from './helpers/upstream'

test('option edges: messages, null-prototype objects, undefined values, missing options', async (t) => {
  const shared = t.throws(() => createHttpClient({ name: 'a', baseUrl: ['http://a:1', 'http://b:1/v1'] })) as InvalidOptionsError
  t.match(shared.message, /entry 0 has "\/", entry 1 has "\/v1"/)
  const long = t.throws(() => createHttpClient({ name: 'a', baseUrl: 'http://a:1', retry: { jitter: 'x'.repeat(50) as 'full' } })) as InvalidOptionsError
  t.match(long.message, /…/, 'a long value is shortened in the message')
  const bare = Object.assign(Object.create(null) as Record<string, unknown>, { baseUrl: 'http://a:1' })
  t.equal(createHttpClient({ name: 'bare', ...bare } as never).name, 'bare', 'a null-prototype object is a plain object')

  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { a: { baseUrl: 'http://a:1', timeout: undefined } } })
  await app.ready()
  t.equal(app.httpClients.a.name, 'a', 'an option given as undefined keeps its default')

  const none = Fastify()
  t.teardown(() => none.close())
  const error = await rejection(none.register(resilientHttp as never).ready())
  t.match(error, { code: 'FRH_INVALID_OPTIONS', option: 'clients' })
})

test('call edges: Unicode white space in a path, null in a query, a budget on a call of a client without one', async (t) => {
  const upstream = await startUpstream((req, res) => sendJson(res, 200, { url: req.url }))
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'q', baseUrl: upstream.url, retry: { budget: false } })
  t.teardown(() => client.close())
  t.ok(await rejection(client.get('/a\u1680b')) instanceof InvalidRequestError, 'OGHAM SPACE MARK')
  t.ok(await rejection(client.get('/a\u2060b')) instanceof InvalidRequestError, 'WORD JOINER')
  t.same(await (await client.get('/q', { query: { a: null, b: 1 } })).json(), { url: '/q?a=&b=1' })
  const res = await client.get('/r', { retry: { budget: { ratio: 0.5 } } })
  t.equal(res.statusCode, 200)
})
