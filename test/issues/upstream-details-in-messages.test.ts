import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import resilientHttp, { InvalidRequestError, InvalidResponseError, UpstreamError } from '../../plugin'
import '../helpers/fastify-types'
import { refusedPort, startUpstream } from '../helpers/upstream'

// Fastify's default error handler sends an error's message to the app's
// caller. `json()` threw a raw SyntaxError quoting the body's first bytes, and
// UpstreamError's message carried undici's (`connect ECONNREFUSED 10.0.0.5:8080`):
// a route that let them escape sent upstream bytes and internal addresses out.

const SECRET_BODY = '<html>internal-stack-trace at db-7.corp:5432 s3cret</html>'

/** What each route let escape, by client name. */
const raised = new Map<string, unknown>()

/** An app with one client per upstream and a route that lets every error escape (and keeps it in `raised`). */
async function gateway (t: Test, clients: Record<string, string>): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  const options = Object.fromEntries(Object.entries(clients).map(([name, baseUrl]) => [name, { baseUrl, retry: false as const }]))
  await app.register(resilientHttp, { clients: options })
  app.get('/via/:name', async (request) => {
    const { name } = request.params as { name: string }
    try {
      return await (await app.httpClients[name].get('/data')).json()
    } catch (error) {
      raised.set(name, error)
      throw error
    }
  })
  return app
}

test('json() on a body that is not JSON is an InvalidResponseError that never quotes the body', async (t) => {
  const upstream = await startUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    if (req.url === '/data' && req.headers['x-slow'] === undefined) {
      res.end(SECRET_BODY)
      return
    }
    // The body arrives after its headers: json() reads it on the slower path.
    res.write(SECRET_BODY.slice(0, 10))
    setTimeout(() => res.end(SECRET_BODY.slice(10)), 30)
  })
  t.teardown(() => upstream.close())
  const app = await gateway(t, { html: upstream.url })

  const reply = await app.inject({ url: '/via/html' })
  t.equal(reply.statusCode, 502)
  t.match(reply.json(), { code: 'FRH_INVALID_RESPONSE', message: 'html: GET /data response body is not valid JSON' })
  t.notMatch(reply.body, /html>|s3cret|db-7/, 'no byte of the body in the reply')

  for (const headers of [{}, { 'x-slow': '1' }]) {
    const error = await app.httpClients.html.get('/data', { headers }).then((res) => res.json()).catch((error: unknown) => error)
    t.ok(error instanceof InvalidResponseError, 'InvalidResponseError')
    const invalid = error as InvalidResponseError
    t.equal(invalid.code, 'FRH_INVALID_RESPONSE')
    t.equal(invalid.statusCode, 502)
    t.equal(invalid.line, undefined, 'a whole body has no line number')
    t.equal(invalid.attempts, 1)
    t.type(invalid.cause, SyntaxError, 'the parser\'s error is the cause')
    t.notMatch(invalid.message, /s3cret|html>/)
  }
})

test('a transport failure\'s message names its kind, never the address', async (t) => {
  const refused = await refusedPort()
  const reset = await startUpstream((req) => { req.socket.destroy() })
  t.teardown(() => reset.close())
  const app = await gateway(t, {
    refused: `http://127.0.0.1:${refused}`,
    reset: reset.url,
    dns: 'http://no-such-host.invalid'
  })

  const cases: Array<[string, RegExp, string[]]> = [
    ['refused', /^refused: GET \/data failed after 1 attempt\(s\): connection refused$/, ['ECONNREFUSED']],
    ['reset', /^reset: GET \/data failed after 1 attempt\(s\): (socket closed|connection reset)$/, ['UND_ERR_SOCKET', 'ECONNRESET']],
    ['dns', /^dns: GET \/data failed after 1 attempt\(s\): DNS lookup failed$/, ['ENOTFOUND', 'EAI_AGAIN']]
  ]
  for (const [name, message, codes] of cases) {
    const reply = await app.inject({ url: `/via/${name}` })
    t.equal(reply.statusCode, 502, `${name}: 502`)
    t.match(reply.json(), { code: 'FRH_UPSTREAM', message }, `${name}: its kind`)
    t.notMatch(reply.body, /127\.0\.0\.1|no-such-host|ECONN|EAI_|ENOTFOUND|UND_ERR|other side closed/, `${name}: no address or undici message in the reply`)
    t.notMatch(reply.body, new RegExp(`:${refused}\\b|:${reset.port}\\b`), `${name}: no port`)

    const error = raised.get(name)
    t.ok(error instanceof UpstreamError, `${name}: UpstreamError`)
    t.ok(codes.includes(((error as Error).cause as { code: string }).code), `${name}: undici's error, with its code, is the cause`)
  }
})

test('a request undici refuses is an InvalidRequestError naming the kind, not undici\'s message', async (t) => {
  const upstream = await startUpstream((_req, res) => { res.end('ok') })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: upstream.url } } })
  app.post('/send', async () => app.httpClients.up.post('/x', { body: 'abc', headers: { 'content-length': '10' } }))
  const reply = await app.inject({ method: 'POST', url: '/send' })
  t.equal(reply.statusCode, 500)
  t.match(reply.json(), {
    code: 'FRH_INVALID_REQUEST',
    message: 'up: POST /x refused: the request as given cannot be sent (request body length does not match its content-length)'
  })
  const error = await app.httpClients.up.post('/x', { body: 'abc', headers: { 'content-length': '10' } }).catch((error: unknown) => error)
  t.ok(error instanceof InvalidRequestError)
  t.equal(((error as Error).cause as { code: string }).code, 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH')
})
