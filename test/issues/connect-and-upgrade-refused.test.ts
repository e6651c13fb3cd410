import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp, { createHttpClient, InvalidOptionsError, InvalidRequestError } from '../../plugin'
import { rejection, startUpstream } from '../helpers/upstream'

// A CONNECT answered 200 made undici hand the socket away: the call ran to its
// timeout and, after close(), the socket stayed open and kept the process alive.
// CONNECT and upgrade requests are refused before anything is sent.
test('CONNECT is refused up front, in any case, and no socket is opened', async (t) => {
  const upstream = await startUpstream((_req, res) => { res.end('ok') })
  t.teardown(() => upstream.close())
  let tunnels = 0
  upstream.server.on('connect', (_req, socket) => {
    tunnels++
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
  })
  const client = createHttpClient({ name: 'tunnel', baseUrl: upstream.url, timeout: 300, retry: false })
  t.teardown(() => client.close())

  for (const method of ['CONNECT', 'connect', 'Connect']) {
    const started = Date.now()
    const error = await rejection(client.request({ method, path: '/' }))
    t.ok(error instanceof InvalidRequestError, `${method}: InvalidRequestError`)
    t.match((error as Error).message, /tunnel: CONNECT \/ refused: method CONNECT is not supported/)
    t.ok(Date.now() - started < 250, `${method}: refused at once, not at the timeout`)
  }
  t.equal(tunnels, 0, 'no tunnel was asked for')
  t.equal(upstream.connections(), 0, 'no connection was opened')
  t.equal(client.stats().requests, 0, 'not counted as a call')
  await client.close()
  t.equal(client.stats().pool?.connected, 0, 'nothing left connected after close')
})

test('an upgrade header is refused up front: in a call\'s headers, defaultHeaders and propagateHeaders', async (t) => {
  const upstream = await startUpstream((_req, res) => { res.end('ok') })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'ws', baseUrl: upstream.url })
  t.teardown(() => client.close())

  for (const name of ['upgrade', 'Upgrade']) {
    const error = await rejection(client.get('/socket', { headers: { [name]: 'websocket', connection: 'upgrade' } }))
    t.ok(error instanceof InvalidRequestError, `${name}: InvalidRequestError`)
    t.match((error as Error).message, new RegExp(`ws: GET /socket refused: headers\\.${name} asks for a protocol upgrade`))
  }
  const viaRequest = await rejection(client.request({ method: 'GET', path: '/socket', headers: { upgrade: 'h2c' } }))
  t.ok(viaRequest instanceof InvalidRequestError, 'request() too')
  t.equal(upstream.hits.length, 0, 'nothing was sent')

  const refused = (() => {
    try {
      createHttpClient({ name: 'ws', baseUrl: upstream.url, defaultHeaders: { Upgrade: 'websocket' } })
    } catch (error) {
      return error
    }
  })()
  t.ok(refused instanceof InvalidOptionsError, 'an upgrade in defaultHeaders is refused at registration')
  t.match(refused, { option: 'defaultHeaders.Upgrade', message: /asks for a protocol upgrade/ })

  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(resilientHttp, { propagateHeaders: ['Upgrade'], clients: { ws: { baseUrl: upstream.url } } }) }, { name: 'InvalidOptionsError', option: 'propagateHeaders.0', message: /must not name "upgrade": forwarding it asks for a protocol upgrade/i })
})
