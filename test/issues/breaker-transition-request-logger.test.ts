import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp from '../../plugin'
import '../helpers/fastify-types'
import { startUpstream } from '../helpers/upstream'

interface Line { msg: string, reqId?: string, client?: string, to?: string, level: number }

// The breaker's listener was bound once, at construction, to the app's
// logger: the line saying a request's failure opened the circuit carried no
// reqId, unlike every other line about that call.
test('a breaker transition a request caused is logged through that request\'s logger', async (t) => {
  let healthy = false
  const upstream = await startUpstream((_req, res) => {
    res.statusCode = healthy ? 200 : 500
    res.end(healthy ? 'ok' : 'down')
  })
  t.teardown(() => upstream.close())
  const lines: Line[] = []
  const app = Fastify({
    logger: { level: 'info', stream: { write (line: string) { lines.push(JSON.parse(line) as Line) } } },
    genReqId: (req) => String(req.headers['x-request-id'])
  })
  await app.register(resilientHttp, {
    clients: { ledger: { baseUrl: upstream.url, retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 50 } } }
  })
  app.get('/balance', async (request) => {
    const res = await request.server.httpClients.ledger.get('/balance')
    return { status: res.statusCode }
  })
  t.teardown(() => app.close())

  t.same((await app.inject({ url: '/balance', headers: { 'x-request-id': 'req-open' } })).json(), { status: 500 })
  const opened = lines.filter((line) => line.msg.startsWith('circuit open'))
  t.equal(opened.length, 1)
  t.match(opened[0], { reqId: 'req-open', client: 'ledger', to: 'open', level: 40 }, 'the request whose failure opened it')

  await new Promise((resolve) => setTimeout(resolve, 80))
  healthy = true
  t.same((await app.inject({ url: '/balance', headers: { 'x-request-id': 'req-probe' } })).json(), { status: 200 })
  const later = lines.filter((line) => line.msg === 'circuit half-open' || line.msg === 'circuit closed')
  t.same(later.map((line) => [line.msg, line.reqId]), [['circuit half-open', 'req-probe'], ['circuit closed', 'req-probe']], 'the probe\'s own request')

  healthy = false
  t.equal((await app.httpClients.ledger.get('/balance')).statusCode, 500, 'a call outside any request')
  const outside = lines.filter((line) => line.msg.startsWith('circuit open'))
  t.equal(outside.length, 2)
  t.equal(outside[1].reqId, undefined, 'the app\'s logger')
  t.equal(outside[1].client, 'ledger')
})
