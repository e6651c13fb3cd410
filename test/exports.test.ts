import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { test } from 'tap'

const execFileAsync = promisify(execFile)
const root = path.join(__dirname, '..')

// The built package as a user's `require()` sees it: package.json → dist/plugin.js.
const api = require('..')

const FUNCTIONS = ['createHttpClient', 'requestIdGenerator', 'isValidRequestId', 'currentRequestId']
const CLASSES = ['HttpClient', 'HttpResponse', 'HttpStream', 'HttpClientError']
const ERROR_CODES: Record<string, string> = {
  CircuitOpenError: 'FRH_CIRCUIT_OPEN',
  OverloadedError: 'FRH_OVERLOADED',
  TimeoutError: 'FRH_TIMEOUT',
  UpstreamError: 'FRH_UPSTREAM',
  HttpStatusError: 'FRH_HTTP_STATUS',
  InvalidRequestError: 'FRH_INVALID_REQUEST',
  ResponseTooLargeError: 'FRH_RESPONSE_TOO_LARGE',
  ClientClosedError: 'FRH_CLIENT_CLOSED',
  InvalidResponseError: 'FRH_INVALID_RESPONSE',
  InvalidOptionsError: 'FRH_INVALID_OPTIONS',
  RateLimitedError: 'FRH_RATE_LIMITED',
  AuthenticationError: 'FRH_AUTHENTICATION'
}

/** One instance of each error class, built through its public constructor. */
function sampleErrors (): Record<string, Error & { code: string }> {
  const details = { clientName: 'payments', method: 'GET', path: '/charge', attempts: 1 }
  return {
    CircuitOpenError: new api.CircuitOpenError(details, 1000),
    OverloadedError: new api.OverloadedError(details, 1000),
    TimeoutError: new api.TimeoutError(details, 'attempt', 100),
    UpstreamError: new api.UpstreamError({ ...details, cause: new Error('reset') }),
    HttpStatusError: new api.HttpStatusError(details, 500, 'oops'),
    InvalidRequestError: new api.InvalidRequestError(details, 'bad path'),
    ResponseTooLargeError: new api.ResponseTooLargeError(details, 10),
    ClientClosedError: new api.ClientClosedError(details),
    InvalidResponseError: new api.InvalidResponseError({ ...details, cause: new SyntaxError('Unexpected token') }, 3),
    InvalidOptionsError: new api.InvalidOptionsError('clients.payments.timeout', 'must be positive', 'payments'),
    RateLimitedError: new api.RateLimitedError(details, 250),
    AuthenticationError: new api.AuthenticationError({ ...details, cause: new Error('vault down') })
  }
}

test('require() returns the plugin itself, with .default and .resilientHttp', async (t) => {
  t.type(api, 'function', 'the module is a function')
  t.equal(api.default, api, '.default is the plugin')
  t.equal(api.resilientHttp, api, '.resilientHttp is the plugin')
  // fastify-plugin's marks: the decorator is visible to the whole app.
  t.equal(api[Symbol.for('skip-override')], true)
  t.equal(api[Symbol.for('fastify.display-name')], 'fastify-resilient-http')
})

test('every named export is there', async (t) => {
  for (const name of FUNCTIONS) t.type(api[name], 'function', `${name} is a function`)
  for (const name of [...CLASSES, ...Object.keys(ERROR_CODES)]) {
    t.type(api[name], 'function', `${name} is exported`)
    t.ok(/^class\b/.test(Function.prototype.toString.call(api[name])), `${name} is a class`)
  }
  t.same(api.CHANNELS, {
    retry: 'fastify-resilient-http:retry',
    retrySkipped: 'fastify-resilient-http:retry-skipped',
    hedge: 'fastify-resilient-http:hedge',
    circuit: 'fastify-resilient-http:circuit',
    shortCircuited: 'fastify-resilient-http:short-circuited',
    overloaded: 'fastify-resilient-http:overloaded',
    deadlineExceeded: 'fastify-resilient-http:deadline-exceeded',
    concurrencyLimit: 'fastify-resilient-http:concurrency-limit',
    replica: 'fastify-resilient-http:replica',
    streamResumed: 'fastify-resilient-http:stream-resumed',
    streamIdleTimeout: 'fastify-resilient-http:stream-idle-timeout',
    rateLimited: 'fastify-resilient-http:rate-limited',
    rateLimitPaused: 'fastify-resilient-http:rate-limit-paused'
  })
  t.ok(Object.isFrozen(api.CHANNELS))
})

test('every error class extends HttpClientError and carries its code', async (t) => {
  const samples = sampleErrors()
  t.same(Object.keys(samples).sort(), Object.keys(ERROR_CODES).sort())
  for (const [name, code] of Object.entries(ERROR_CODES)) {
    const ErrorClass = api[name]
    t.ok(ErrorClass.prototype instanceof api.HttpClientError, `${name} extends HttpClientError`)
    const error = samples[name]
    t.ok(error instanceof ErrorClass)
    t.ok(error instanceof api.HttpClientError)
    t.ok(error instanceof Error)
    t.equal(error.code, code, `${name} has code ${code}`)
    t.equal(error.name, name)
    t.equal((error as unknown as { clientName: string }).clientName, 'payments')
  }
  t.equal((samples.CircuitOpenError as unknown as { remainingMs: number }).remainingMs, 1000)
  t.equal((samples.TimeoutError as unknown as { kind: string }).kind, 'attempt')
  t.equal((samples.HttpStatusError as unknown as { upstreamStatusCode: number }).upstreamStatusCode, 500)
  t.equal((samples.OverloadedError as unknown as { limit: number }).limit, 1000)
  t.equal((samples.ResponseTooLargeError as unknown as { limit: number }).limit, 10)
  t.equal((samples.InvalidOptionsError as unknown as { option: string }).option, 'clients.payments.timeout')
  t.type((samples.UpstreamError as Error).cause, Error)
  t.equal((samples.InvalidResponseError as unknown as { line: number }).line, 3)
  t.equal((samples.RateLimitedError as unknown as { retryAfterMs: number }).retryAfterMs, 250)
  t.type((samples.AuthenticationError as Error).cause, Error)
})

test('the exports work: a client made from the built package', async (t) => {
  const client = api.createHttpClient({ name: 'built', baseUrl: 'http://127.0.0.1:9' })
  t.teardown(() => client.close())
  t.ok(client instanceof api.HttpClient)
  t.equal(client.stats().circuit, 'closed')
  t.equal(api.isValidRequestId('abc-123'), true)
  t.equal(api.isValidRequestId('bad id'), false)
  t.equal(api.currentRequestId(), undefined, 'outside a request there is no id')
  const genReqId = api.requestIdGenerator()
  t.match(genReqId({ headers: {} }), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  t.equal(genReqId({ headers: { 'x-request-id': 'abc-123' } }), 'abc-123')
})

test('ESM: the package imports by name through its exports map', async (t) => {
  const script = `
    import resilientHttp, * as ns from 'fastify-resilient-http'
    import { createHttpClient, CircuitOpenError, HttpClientError, resilientHttp as named, CHANNELS } from 'fastify-resilient-http'
    const client = createHttpClient({ name: 'esm', baseUrl: 'http://127.0.0.1:9' })
    const error = new CircuitOpenError({ clientName: 'esm' }, 5)
    await client.close()
    console.log(JSON.stringify({
      defaultType: typeof resilientHttp,
      defaultIsNamed: resilientHttp === named,
      defaultIsPlugin: resilientHttp[Symbol.for('fastify.display-name')],
      clientName: client.name,
      code: error.code,
      isBase: error instanceof HttpClientError,
      channel: CHANNELS.retry,
      names: Object.keys(ns).filter((name) => name !== '__esModule').sort()
    }))
  `
  const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '' },
    timeout: 60_000
  })
  const result = JSON.parse(stdout)
  t.equal(result.defaultType, 'function', 'the default import is the plugin function')
  t.equal(result.defaultIsNamed, true)
  t.equal(result.defaultIsPlugin, 'fastify-resilient-http')
  t.equal(result.clientName, 'esm')
  t.equal(result.code, 'FRH_CIRCUIT_OPEN')
  t.equal(result.isBase, true)
  t.equal(result.channel, 'fastify-resilient-http:retry')
  const expected = ['default', 'resilientHttp', 'CHANNELS', ...FUNCTIONS, ...CLASSES, ...Object.keys(ERROR_CODES)]
  for (const name of expected) t.ok(result.names.includes(name), `ESM named export ${name}`)
})
