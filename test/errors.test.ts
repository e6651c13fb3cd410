import { inspect } from 'node:util'
import Fastify from 'fastify'
import { test } from 'tap'
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import resilientHttp, {
  AuthenticationError, CircuitOpenError, ClientClosedError, HttpClientError, HttpStatusError, InvalidOptionsError, InvalidRequestError,
  InvalidResponseError, OverloadedError, RateLimitedError, ResponseTooLargeError, TimeoutError, UpstreamError
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
  [new InvalidOptionsError('clients.payments.timeout', 'must be positive', 'payments'), 'FRH_INVALID_OPTIONS', 500],
  [new InvalidResponseError({ ...details, cause: new SyntaxError('Unexpected token <') }), 'FRH_INVALID_RESPONSE', 502],
  [new RateLimitedError(details, 250), 'FRH_RATE_LIMITED', 503],
  [new AuthenticationError({ ...details, cause: new Error('vault unreachable at 10.0.0.7') }), 'FRH_AUTHENTICATION', 502]
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
  t.equal(new UpstreamError({ ...details, cause: new Error('socket hang up') }).message, 'payments: GET /charge failed after 2 attempt(s): transport failure')
  t.equal(new UpstreamError({ ...details, cause: 'ECONNRESET' }).message, 'payments: GET /charge failed after 2 attempt(s): transport failure')
  const notJson = new InvalidResponseError({ ...details, cause: new SyntaxError('Unexpected token <') })
  t.equal(notJson.message, 'payments: GET /charge response body is not valid JSON')
  t.equal(notJson.line, undefined)
  const badLine = new InvalidResponseError({ ...details, cause: new SyntaxError('Unexpected token <') }, 3)
  t.equal(badLine.line, 3)
  t.equal(badLine.message, 'payments: GET /charge response line 3 is not valid JSON')
  const limited = new RateLimitedError(details, 250)
  t.equal(limited.retryAfterMs, 250)
  t.equal(limited.message, 'payments: GET /charge refused: rate limited, next token in 250 ms')
  const auth = new AuthenticationError({ ...details, cause: new Error('vault unreachable at 10.0.0.7') })
  t.equal(auth.message, 'payments: GET /charge failed: the auth token function threw or rejected')
  t.match(auth.cause, { message: /10\.0\.0\.7/ }, 'the function\'s error stays on cause')
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

test('a transport failure\'s message names its kind by code, never undici\'s message', async (t) => {
  const kinds: Array<[string, string]> = [
    ['ECONNREFUSED', 'connection refused'],
    ['ECONNRESET', 'connection reset'],
    ['ENOTFOUND', 'DNS lookup failed'],
    ['EAI_AGAIN', 'DNS lookup failed'],
    ['UND_ERR_SOCKET', 'socket closed'],
    ['UND_ERR_CONNECT_TIMEOUT', 'connect timeout'],
    ['EHOSTUNREACH', 'host unreachable'],
    ['HPE_INVALID_HEADER_TOKEN', 'invalid HTTP response'],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'TLS failure'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'TLS failure'],
    ['EWHATEVER', 'transport failure (EWHATEVER)'],
    ['not a code: 10.0.0.5', 'transport failure']
  ]
  for (const [code, kind] of kinds) {
    const cause = Object.assign(new Error(`connect ${code} 10.0.0.5:8080`), { code })
    const error = new UpstreamError({ ...details, cause })
    t.equal(error.message, `payments: GET /charge failed after 2 attempt(s): ${kind}`, code)
    t.equal(error.cause, cause, 'undici\'s error, address and all, is the cause')
  }
})

test('every message of ours leaves upstream bytes and addresses to its fields', async (t) => {
  for (const [error] of table) {
    t.notMatch(error.message, /s3cret|secret|10\.0\.0\.7|Unexpected token|socket hang up/, `${error.name}: ${error.message}`)
  }
})

/** Every error class, and one instance of each, made through `api`'s public constructors. */
function samplesOf (api: typeof import('../plugin')): Array<[string, new (...args: never[]) => Error, Error]> {
  const response = {} as never
  return [
    ['HttpClientError', api.HttpClientError, new api.InvalidRequestError(details, 'bad path')],
    ['CircuitOpenError', api.CircuitOpenError, new api.CircuitOpenError(details, 1)],
    ['OverloadedError', api.OverloadedError, new api.OverloadedError(details, 1)],
    ['TimeoutError', api.TimeoutError, new api.TimeoutError(details, 'attempt', 1)],
    ['UpstreamError', api.UpstreamError, new api.UpstreamError(details)],
    ['HttpStatusError', api.HttpStatusError, new api.HttpStatusError(details, 500, '', response)],
    ['InvalidRequestError', api.InvalidRequestError, new api.InvalidRequestError(details, 'bad path')],
    ['ResponseTooLargeError', api.ResponseTooLargeError, new api.ResponseTooLargeError(details, 1)],
    ['InvalidResponseError', api.InvalidResponseError, new api.InvalidResponseError(details)],
    ['ClientClosedError', api.ClientClosedError, new api.ClientClosedError(details)],
    ['RateLimitedError', api.RateLimitedError, new api.RateLimitedError(details, 1)],
    ['AuthenticationError', api.AuthenticationError, new api.AuthenticationError(details)],
    ['InvalidOptionsError', api.InvalidOptionsError, new api.InvalidOptionsError('timeout', 'must be positive')]
  ]
}

test('instanceof holds for every class across two copies of the built package', async (t) => {
  // A second copy, as in a nested node_modules: the built package in a folder of its own.
  const folder = mkdtempSync(path.join(tmpdir(), 'frh-second-copy-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const root = path.join(__dirname, '..')
  cpSync(path.join(root, 'dist'), path.join(folder, 'dist'), { recursive: true })
  cpSync(path.join(root, 'package.json'), path.join(folder, 'package.json'))
  symlinkSync(path.join(root, 'node_modules'), path.join(folder, 'node_modules'), 'dir')
  const first = require(root) as typeof import('../plugin')
  const second = require(folder) as typeof import('../plugin')
  t.not(second.TimeoutError, first.TimeoutError, 'two distinct copies')

  const firsts = samplesOf(first)
  const seconds = samplesOf(second)
  for (const [i, [name, FirstClass, firstError]] of firsts.entries()) {
    const [, SecondClass, secondError] = seconds[i]
    t.ok(secondError instanceof FirstClass, `a second copy's ${name} is a first copy's ${name}`)
    t.ok(firstError instanceof SecondClass, `and the other way round (${name})`)
    t.ok(secondError instanceof first.HttpClientError, `${name} is the other copy's HttpClientError`)
    t.ok(secondError instanceof Error)
    for (const [otherName, OtherClass] of firsts) {
      if (otherName === name || otherName === 'HttpClientError' || name === 'HttpClientError') continue
      t.notOk(secondError instanceof OtherClass, `a ${name} is not a ${otherName}`)
    }
  }
  t.notOk(new second.TimeoutError(details, 'attempt', 1) instanceof first.CircuitOpenError, 'a TimeoutError is not a CircuitOpenError')
  t.notOk(new Error('x') instanceof first.TimeoutError)
  t.notOk(Object.assign(new Error('x'), { code: 'FRH_TIMEOUT' }) instanceof first.TimeoutError, 'a look-alike is not branded')
  t.notOk((null as unknown) instanceof first.HttpClientError)
  t.notOk((42 as unknown) instanceof first.TimeoutError)
})

test('a class an app derives from ours keeps the ordinary instanceof', async (t) => {
  class PaymentTimeout extends TimeoutError {}
  const derived = new PaymentTimeout(details, 'attempt', 100)
  t.ok(derived instanceof PaymentTimeout)
  t.ok(derived instanceof TimeoutError)
  t.ok(derived instanceof HttpClientError)
  t.notOk(new TimeoutError(details, 'attempt', 100) instanceof PaymentTimeout, 'a plain TimeoutError is not the app\'s subclass')
  t.equal(derived.name, 'PaymentTimeout')
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
