import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp from '../plugin'
import './helpers/fastify-types'
import { sendJson, startUpstream } from './helpers/upstream'

test('a route calls its upstream through a named client', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { path: hit.url, id: hit.headers['x-request-id'] }))
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { users: { baseUrl: `${upstream.url}/v1` } } })
  app.get('/proxy', async (request) => {
    const res = await request.server.httpClients.users.get('/me')
    return res.raiseForStatus().json()
  })
  const reply = await app.inject({ url: '/proxy', headers: { 'x-request-id': 'abc-123' } })
  t.equal(reply.statusCode, 200)
  const body = reply.json()
  t.equal(body.path, '/v1/me')
  t.equal(body.id, reply.headers['x-request-id'])
  t.equal(upstream.hits.length, 1)
})
