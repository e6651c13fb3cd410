import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp from '../plugin'
import './helpers/fastify-types'

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
