import { inspect } from 'node:util'
import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp, {
  CircuitOpenError, ClientClosedError, HttpClientError, HttpStatusError, InvalidOptionsError, InvalidRequestError,
  OverloadedError, ResponseTooLargeError, TimeoutError, UpstreamError
} from '../plugin'
import './helpers/fastify-types'
import { startUpstream } from './helpers/upstream'

const details = { clientName: 'payments', method: 'GET', path: '/charge', attempts: 2 }

// [error, code, statusCode]
const table: Array<[HttpClientError, string, number]> = [
  [new CircuitOpenError(details, 1_000), 'FRH_CIRCUIT_OPEN', 503],
  [new OverloadedError(details, 100), 'FRH_OVERLOADED', 503],
  [new TimeoutError(details, 'attempt', 100), 'FRH_TIMEOUT', 504],
  [new TimeoutError(details, 'total', 100), 'FRH_TIMEOUT', 504],
  [new TimeoutError(details, 'deadline', 100), 'FRH_TIMEOUT', 504],
  [new UpstreamError({ ...details, cause: new Error('socket hang up') }), 'FRH_UPSTREAM', 502],
  [new HttpStatusError(details, 401, 'secret', {} as never), 'FRH_HTTP_STATUS', 502],
  [new HttpStatusError(details, 404, '', {} as never), 'FRH_HTTP_STATUS', 502],
  [new ResponseTooLargeError(details, 10), 'FRH_RESPONSE_TOO_LARGE', 502],
  [new InvalidRequestError(details, 'bad path'), 'FRH_INVALID_REQUEST', 500],
  [new ClientClosedError(details), 'FRH_CLIENT_CLOSED', 503],
  [new InvalidOptionsError('clients.payments.timeout', 'must be positive', 'payments'), 'FRH_INVALID_OPTIONS', 500]
]

test('every error carries its code and the status a gateway answers with', async (t) => {
  for (const [error, code, statusCode] of table) {
    t.ok(error instanceof HttpClientError, `${error.name} is an HttpClientError`)
    t.equal(error.code, code, error.name)
    t.equal(error.statusCode, statusCode, `${error.name} answers ${statusCode}`)
    t.equal(error.clientName, 'payments')
  }
})

test('HttpStatusError keeps the upstream status, body and response apart from its own status and message', async (t) => {
  const response = { statusCode: 401 } as never
  const error = new HttpStatusError(details, 401, '{"token":"s3cret"}', response)
  t.equal(error.upstreamStatusCode, 401)
  t.equal(error.statusCode, 502)
  t.equal(error.body, '{"token":"s3cret"}')
  t.equal(error.response, response)
  t.equal(error.message, 'payments: GET /charge answered 401')
  t.notMatch(error.message, /s3cret/)
  t.equal(Object.keys(error).includes('response'), false, 'response is not enumerable, so loggers do not walk its stream')
  t.notMatch(JSON.stringify(error), /"response"/)
})

test('messages say what happened', async (t) => {
  t.match(new CircuitOpenError(details, 1_500).message, /circuit open \(failures\), half-opens in 1500 ms/)
  const halfOpen = new CircuitOpenError(details, 0, 'slow-calls')
  t.match(halfOpen.message, /half-open and its probes are taken \(opened by slow-calls\)$/)
  t.notMatch(halfOpen.message, /0 ms/)
  t.equal(halfOpen.remainingMs, 0)
  t.equal(halfOpen.openedBy, 'slow-calls')
  t.equal(halfOpen.cause, undefined, 'openedBy is not the standard Error cause')
  const ratio = new CircuitOpenError(details, 800, 'failure-ratio')
  t.equal(ratio.message, 'payments: GET /charge refused: circuit open (failure-ratio), half-opens in 800 ms')
  t.equal(new CircuitOpenError(details, 800).openedBy, 'failures', 'failures when not told')
  const overloaded = new OverloadedError(details, 100)
  t.equal(overloaded.limit, 100)
  t.match(overloaded.message, /payments: GET \/charge refused: 100 calls already in flight/)
  t.match(new TimeoutError(details, 'attempt', 100).message, /attempt timeout of 100 ms \(attempt 2\)/)
  t.match(new TimeoutError(details, 'total', 900).message, /total timeout of 900 ms/)
  const deadline = new TimeoutError(details, 'deadline', 800)
  t.equal(deadline.kind, 'deadline')
  t.match(deadline.message, /deadline of the inbound request/)
  t.match(new UpstreamError({ ...details, cause: new Error('socket hang up') }).message, /failed after 2 attempt\(s\): socket hang up/)
  t.match(new UpstreamError({ ...details, cause: 'ECONNRESET' }).message, /: ECONNRESET$/)
  t.equal(new ClientClosedError({ clientName: 'payments' }).message, 'payments refused: client is closed')
})

test('a refusal\'s message is written when read, and reads the same in every form', async (t) => {
  const open = new CircuitOpenError(details, 2_000)
  const expected = 'payments: GET /charge refused: circuit open (failures), half-opens in 2000 ms'
  t.equal(open.message, expected)
  t.equal(String(open), `CircuitOpenError: ${expected}`)
  t.equal(open.stack?.split('\n')[0], `CircuitOpenError: ${expected}`, 'the stack starts with it too')
  t.match(inspect(open), expected)
  t.equal(Object.keys(open).includes('message'), false, 'not enumerable, as an Error\'s own message')
  t.equal(new OverloadedError(details, 7).stack?.split('\n')[0], 'OverloadedError: payments: GET /charge refused: 7 calls already in flight')

  const reworded = new OverloadedError(details, 7)
  reworded.message = `upstream busy: ${reworded.message}`
  t.equal(reworded.message, 'upstream busy: payments: GET /charge refused: 7 calls already in flight', 'a message can still be assigned')
  t.equal(new OverloadedError(details, 7).message, 'payments: GET /charge refused: 7 calls already in flight', 'on that error alone')
})

test('instanceof holds across two copies of the package', async (t) => {
  const file = require.resolve('../lib/errors')
  const first = require(file) as typeof import('../lib/errors')
  delete require.cache[file]
  const second = require(file) as typeof import('../lib/errors')
  t.not(second.HttpClientError, first.HttpClientError, 'two distinct copies')
  const error = new second.OverloadedError(details, 1)
  t.ok(error instanceof first.HttpClientError)
  t.ok(error instanceof second.OverloadedError)
  t.notOk(error instanceof first.OverloadedError, 'subclasses check their own prototype chain')
  t.notOk(new Error('x') instanceof first.HttpClientError)
  t.notOk((null as unknown) instanceof first.HttpClientError)
})

test('thrown from a route, each error answers its own status through Fastify\'s error handler', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/throw/:index', async (request) => {
    throw table[Number((request.params as { index: string }).index)][0]
  })
  for (let i = 0; i < table.length; i++) {
    const [error, code, statusCode] = table[i]
    const reply = await app.inject({ url: `/throw/${i}` })
    t.equal(reply.statusCode, statusCode, `${error.name} -> ${statusCode}`)
    t.equal(reply.json().code, code)
  }
})

test('an upstream 401 raised in a route answers 502, with no upstream body or header in the reply', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="upstream"' })
    res.end('{"error":"token s3cret-upstream-token expired"}')
  })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { users: { baseUrl: upstream.url, retry: false } } })
  let raised: unknown
  app.get('/me', async () => {
    const res = await app.httpClients.users.get('/me')
    try {
      return res.raiseForStatus().json()
    } catch (error) {
      raised = error
      throw error
    }
  })
  const reply = await app.inject({ url: '/me' })
  t.equal(upstream.hits.length, 1)
  t.equal(reply.statusCode, 502, 'the caller is not told it is unauthorized')
  t.notMatch(reply.body, /s3cret/)
  t.equal(reply.headers['www-authenticate'], undefined)
  t.match(reply.json(), { statusCode: 502, code: 'FRH_HTTP_STATUS', message: 'users: GET /me answered 401' })
  t.type(raised, HttpStatusError)
  t.equal((raised as HttpStatusError).upstreamStatusCode, 401)
  t.match((raised as HttpStatusError).body, /s3cret-upstream-token/, 'the body is still on the error for the app')
  t.equal((raised as HttpStatusError).response?.statusCode, 401)
})
