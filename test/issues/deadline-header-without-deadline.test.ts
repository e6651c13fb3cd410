import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp from '../../plugin'
import { startUpstream } from '../helpers/upstream'

// With `deadline` forwarding on, a request that arrived without a budget sent
// `x-request-timeout-ms: NaN` on every outbound call.
test('no deadline header is forwarded for a request that has no deadline', async (t) => {
  const upstream = await startUpstream((_req, res) => { res.end('ok') })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { deadline: true, clients: { next: { baseUrl: upstream.url } } })
  app.get('/', async () => (await app.httpClients.next.get('/')).text())

  t.equal((await app.inject({ url: '/' })).statusCode, 200)
  t.equal(upstream.hits[0].headers['x-request-timeout-ms'], undefined, 'no budget, no header')

  await app.inject({ url: '/', headers: { 'x-request-timeout-ms': '5000' } })
  const forwarded = Number(upstream.hits[1].headers['x-request-timeout-ms'])
  t.ok(forwarded > 0 && forwarded <= 5_000, `a budget is forwarded (${forwarded})`)
})
