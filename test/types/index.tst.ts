import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import { Readable } from 'node:stream'
import { Agent, MockAgent } from 'undici'
import resilientHttp, {
  createHttpClient, requestIdGenerator, resilientHttp as named,
  CircuitOpenError, HttpClientError, TimeoutError, InvalidOptionsError, HttpStatusError, OverloadedError,
  InvalidResponseError, RateLimitedError, AuthenticationError, UpstreamError,
  HttpClient, HttpResponse, type ClientStats, type PluginOptions, type ClientOptions, type CallOptions,
  type TimeoutKind, currentDeadline, resendCountSpanHook, type ReplicaStats, type HedgeEvent,
  type CircuitCause, type CircuitEvent, type CircuitOpenedBy,
  HttpStream, type ServerSentEvent, type StreamOptions, type StreamResumedEvent
} from 'fastify-resilient-http'

declare module 'fastify-resilient-http' {
  interface HttpClients {
    payments: HttpClient
  }
}

test('the default export and the named export are the plugin', async () => {
  const app = Fastify({ genReqId: requestIdGenerator() })
  expect(named).type.toBe(resilientHttp)
  await app.register(resilientHttp, { clients: { payments: { baseUrl: 'http://127.0.0.1:1' } } })
  expect(app.register).type.not.toBeCallableWith(resilientHttp, { clients: { payments: { baseUrl: 1 } } })
  expect(app.register).type.not.toBeCallableWith(resilientHttp, { clients: { payments: { baseUrl: 'http://x', retry: { maxAttempts: '3' } } } })
  expect(app.register).type.not.toBeCallableWith(resilientHttp, { clients: { payments: { baseUrl: 'http://x', circuitBreaker: { recoveryMs: true } } } })
})

test('fastify.httpClients is typed by the augmented HttpClients', () => {
  const app = Fastify()
  expect(app.httpClients.payments).type.toBe<HttpClient>()
  expect(app.httpClients).type.not.toHaveProperty('users')
})

test('calls resolve to HttpResponse, json<T>() is generic', async () => {
  const client = createHttpClient({ name: 'users', baseUrl: 'http://127.0.0.1:1' })
  const res = await client.post('/charge', { json: { amount: 1 }, idempotencyKey: true, retry: { maxAttempts: 2 } })
  expect(res).type.toBe<HttpResponse>()
  expect(res.statusCode).type.toBe<number>()
  expect(res.ok).type.toBe<boolean>()
  expect(res.attempts).type.toBe<number>()
  expect(await res.json<{ id: string }>()).type.toBe<{ id: string }>()
  expect(await res.text()).type.toBe<string>()
  expect(res.raiseForStatus()).type.toBe<HttpResponse>()
  expect(client.get).type.not.toBeCallableWith('/x', { timeout: '1s' })
  expect(client.get).type.not.toBeCallableWith('/x', { idempotencyKey: 1 })
  expect(client.request).type.not.toBeCallableWith({ path: '/x' })
  expect(client.stats()).type.toBe<ClientStats>()
  expect(client.stats().circuit).type.toBe<'closed' | 'open' | 'half-open'>()
  expect(createHttpClient).type.not.toBeCallableWith({ baseUrl: 'http://x' })
})

test('errors carry their fields', () => {
  const error = new Error() as unknown
  if (error instanceof CircuitOpenError) {
    expect(error.remainingMs).type.toBe<number>()
    expect(error.openedBy).type.toBe<CircuitOpenedBy>()
    expect(error.openedBy).type.toBe<'failures' | 'failure-ratio' | 'slow-calls' | 'retry-after'>()
    expect(error.openedBy).type.not.toBe<CircuitCause>()
  }
  expect<CircuitCause>().type.toBeAssignableFrom('slow-calls' as const)
  expect<CircuitCause>().type.toBeAssignableFrom('probe' as const)
  expect<CircuitEvent['cause']>().type.toBe<CircuitCause>()
  expect<CircuitOpenedBy>().type.not.toBeAssignableFrom('probe' as const)
  expect<CircuitOpenedBy>().type.not.toBeAssignableFrom('slow' as const)
  expect(CircuitOpenError).type.toBeConstructableWith({ clientName: 'a' }, 10, 'failure-ratio')
  expect(CircuitOpenError).type.not.toBeConstructableWith({ clientName: 'a' }, 10, 'slow')
  if (error instanceof TimeoutError) expect(error.kind).type.toBe<'attempt' | 'total' | 'deadline' | 'idle'>()
  if (error instanceof InvalidOptionsError) expect(error.option).type.toBe<string>()
  if (error instanceof HttpStatusError) {
    expect(error.statusCode).type.toBe<number>()
    expect(error.upstreamStatusCode).type.toBe<number>()
    expect(error.body).type.toBe<string>()
    expect(error.response).type.toBe<HttpResponse>()
  }
  if (error instanceof OverloadedError) {
    expect(error.limit).type.toBe<number>()
    expect(error).type.toBeAssignableTo<HttpClientError>()
  }
  if (error instanceof HttpClientError) {
    expect(error.code).type.toBe<string>()
    expect(error.statusCode).type.toBe<number>()
  }
  expect<TimeoutKind>().type.toBe<'attempt' | 'total' | 'deadline' | 'idle'>()
  expect(OverloadedError).type.toBeConstructableWith({ clientName: 'a' }, 10)
  expect(OverloadedError).type.not.toBeConstructableWith({ clientName: 'a' }, '10')
  expect(HttpStatusError).type.not.toBeConstructableWith({ clientName: 'a' }, 401, 'body')
})

test('the 0.3 errors carry their fields', () => {
  const error = new Error() as unknown
  if (error instanceof InvalidResponseError) {
    expect(error.line).type.toBe<number | undefined>()
    expect(error).type.toBeAssignableTo<HttpClientError>()
  }
  if (error instanceof RateLimitedError) expect(error.retryAfterMs).type.toBe<number>()
  if (error instanceof AuthenticationError) expect(error.cause).type.toBe<unknown>()
  expect(InvalidResponseError).type.toBeConstructableWith({ clientName: 'a', cause: new SyntaxError('x') }, 2)
  expect(InvalidResponseError).type.toBeConstructableWith({ clientName: 'a', cause: new SyntaxError('x') })
  expect(InvalidResponseError).type.not.toBeConstructableWith({ clientName: 'a' }, '2')
  expect(RateLimitedError).type.toBeConstructableWith({ clientName: 'a' }, 250)
  expect(RateLimitedError).type.not.toBeConstructableWith({ clientName: 'a' }, '250')
  expect(AuthenticationError).type.toBeConstructableWith({ clientName: 'a', cause: new Error('x') })
  expect(AuthenticationError).type.not.toBeConstructableWith('a')
  expect(UpstreamError).type.toBeConstructableWith({ clientName: 'a', cause: new Error('x') })
})

test('HttpClient and HttpResponse cannot be constructed by users', () => {
  expect(HttpClient).type.not.toBeConstructableWith()
  expect(HttpClient).type.not.toBeConstructableWith({ name: 'users', baseUrl: 'http://x' })
  expect(HttpResponse).type.not.toBeConstructableWith()
  expect(HttpResponse).type.not.toBeConstructableWith({}, { clientName: 'a', attempts: 1 })
  expect(HttpClient).type.not.toHaveProperty('create')
  expect(HttpResponse).type.not.toHaveProperty('from')
  // What a user holds is still a class to test against.
  const value = {} as unknown
  if (value instanceof HttpResponse) expect(value.statusCode).type.toBe<number>()
  if (value instanceof HttpClient) expect(value.name).type.toBe<string>()
})

test('client options: baseUrl, hedging, overload, replicas', () => {
  expect<ClientOptions>().type.toBeAssignableFrom({ baseUrl: new URL('http://x/v1') })
  expect<ClientOptions>().type.toBeAssignableFrom({ baseUrl: ['http://a:1/v1', new URL('http://b:1/v1')] })
  expect<ClientOptions>().type.toBeAssignableFrom({ baseUrl: ['http://a:1', 'http://b:1'] as const })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ baseUrl: [1, 2] })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ baseUrl: { host: 'x' } })

  expect<ClientOptions>().type.toBeAssignableFrom({ hedge: { delayMs: 'auto' as const, maxHedges: 2 } })
  expect<ClientOptions>().type.toBeAssignableFrom({ hedge: { delayMs: 50 } })
  expect<ClientOptions>().type.toBeAssignableFrom({ hedge: false as const })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ hedge: true })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ hedge: { delayMs: 'p95' } })

  expect<ClientOptions>().type.toBeAssignableFrom({ maxInFlight: 10 })
  expect<ClientOptions>().type.toBeAssignableFrom({ maxInFlight: false as const })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ maxInFlight: true })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ maxInFlight: '10' })

  expect<ClientOptions>().type.toBeAssignableFrom({ adaptiveConcurrency: true })
  expect<ClientOptions>().type.toBeAssignableFrom({ adaptiveConcurrency: { initial: 10, min: 2, max: 100 } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ adaptiveConcurrency: 'on' })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ adaptiveConcurrency: { start: 10 } })

  expect<ClientOptions>().type.toBeAssignableFrom({ outlierDetection: { consecutiveFailures: 3, baseEjectionMs: 10_000, maxEjectedPercent: 50 } })
  expect<ClientOptions>().type.toBeAssignableFrom({ outlierDetection: false as const })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ outlierDetection: 5 })

  expect<ClientOptions>().type.toBeAssignableFrom({ circuitBreaker: { openOnRetryAfter: false } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { openOnRetryAfter: 'no' } })
  expect<ClientOptions>().type.toBeAssignableFrom({
    circuitBreaker: { failureRatio: 0.25, slowCallMs: 2_000, slowCallRatio: 0.5, minimumThroughput: 20, samplingMs: 10_000, recoveryMs: 5_000, recoveryMaxMs: 300_000 }
  })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { failureRatio: '30%' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { slowCallMs: true } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { slowCallRatio: null } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { minimumThroughput: '20' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { samplingMs: '10s' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { recoveryMaxMs: false } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ circuitBreaker: { slowCallThreshold: 2_000 } })

  // An unset environment variable type-checks; registration refuses it.
  expect<ClientOptions>().type.toBeAssignableFrom({ defaultHeaders: { 'x-api-key': process.env.API_KEY } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ pool: { connections: 'many' } })
})

test('a dispatcher may be an undici 7 or an undici 8 one', () => {
  expect<ClientOptions>().type.toBeAssignableFrom({ dispatcher: new MockAgent() })
  expect<ClientOptions>().type.toBeAssignableFrom({ dispatcher: new Agent() })
  // undici 8's Dispatcher, as far as its shape differs: other option and handler types.
  interface Undici8Handler { onRequestStart?: (controller: { abort: (reason: Error) => void }, context: object) => void }
  interface Undici8Dispatcher { dispatch (options: { origin?: string | URL, path: string, method: string }, handler: Undici8Handler): boolean }
  expect<ClientOptions>().type.toBeAssignableFrom({ dispatcher: {} as Undici8Dispatcher })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ dispatcher: { request () {} } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ dispatcher: 'global' })
})

test('call options: hedge and deadline overrides', () => {
  expect<CallOptions>().type.toBeAssignableFrom({ hedge: { maxHedges: 2 } })
  expect<CallOptions>().type.toBeAssignableFrom({ hedge: false as const })
  expect<CallOptions>().type.toBeAssignableFrom({ deadline: false as const })
  expect<CallOptions>().type.not.toBeAssignableFrom({ deadline: true })
  expect<CallOptions>().type.not.toBeAssignableFrom({ hedge: { maxHedges: '2' } })
  const client = createHttpClient({ name: 'users', baseUrl: ['http://a:1', new URL('http://b:1')] })
  expect(client.get).type.toBeCallableWith('/x', { hedge: { delayMs: 20 }, deadline: false })
  expect(client.get).type.not.toBeCallableWith('/x', { deadline: 100 })
})

test('plugin options', () => {
  expect({ clients: { a: { baseUrl: 'http://x' } }, propagateHeaders: ['traceparent'] }).type.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, echoRequestId: 'yes' }).type.not.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, deadline: true }).type.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, deadline: { header: 'x-budget-ms', forward: false } }).type.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, deadline: { header: 42 } }).type.not.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, deadline: 800 }).type.not.toBeAssignableTo<PluginOptions>()
})

test('deadlines, replicas, hedges and the span hook', () => {
  expect(currentDeadline()).type.toBe<number | undefined>()
  expect(resendCountSpanHook()).type.toBe<Readonly<Record<string, number>>>()
  const stats = createHttpClient({ name: 'users', baseUrl: 'http://a:1' }).stats()
  expect(stats.replicas).type.toBe<ReplicaStats[]>()
  expect(stats.concurrencyLimit).type.toBe<number | undefined>()
  expect<HedgeEvent>().type.toBeAssignableFrom({ client: 'c', method: 'GET', path: '/', attempt: 2, delayMs: 50 })
  const app = Fastify()
  app.get('/x', { config: { deadlineMs: 800 } }, async () => ({}))
  expect(app.get).type.not.toBeCallableWith('/x', { config: { deadlineMs: '800' } }, async () => ({}))
})

test('bodies: form, FormData, Blob, streams and body functions; wrong types fail to compile', () => {
  const client = createHttpClient({ name: 'files', baseUrl: 'http://a:1' })
  expect(client.post).type.toBeCallableWith('/x', { form: { amount: 1, currency: 'usd', capture: false, expand: ['a', 'b'], skip: undefined } })
  expect(client.post).type.toBeCallableWith('/x', { form: new URLSearchParams('a=1') })
  expect(client.post).type.toBeCallableWith('/x', { body: new FormData() })
  expect(client.post).type.toBeCallableWith('/x', { body: new Blob(['x'], { type: 'text/plain' }) })
  expect(client.post).type.toBeCallableWith('/x', { body: new ArrayBuffer(8) })
  expect(client.post).type.toBeCallableWith('/x', { body: new URLSearchParams() })
  expect(client.put).type.toBeCallableWith('/x', { body: () => Readable.from(['a']) })
  expect(client.put).type.toBeCallableWith('/x', { body: () => 'text' })
  expect(client.post).type.not.toBeCallableWith('/x', { form: { nested: { a: 1 } } })
  expect(client.post).type.not.toBeCallableWith('/x', { form: { when: new Date() } })
  expect(client.post).type.not.toBeCallableWith('/x', { body: { a: 1 } })
  expect(client.post).type.not.toBeCallableWith('/x', { body: 42 })
  expect(client.post).type.not.toBeCallableWith('/x', { body: new Map() })
  expect(client.post).type.not.toBeCallableWith('/x', { body: async () => 'late' })
  expect(client.post).type.not.toBeCallableWith('/x', { followRedirects: '3' })
  expect<CallOptions>().type.toBeAssignableFrom({ followRedirects: 3 })
})

test('auth and followRedirects options', async () => {
  const client = createHttpClient({ name: 'api', baseUrl: 'http://a:1', followRedirects: 2, auth: { bearer: 't' } })
  const res = await client.get('/x')
  expect(res.redirects).type.toBe<number>()
  expect(res.path).type.toBe<string>()
  expect(client.stats().redirects).type.toBe<number>()
  expect(new AuthenticationError({ clientName: 'api' }).code).type.toBe<string>()
  expect<ClientOptions>().type.toBeAssignableFrom({ auth: { bearer: 'token' }, followRedirects: 5 })
  expect<ClientOptions>().type.toBeAssignableFrom({ auth: { username: 'ana', password: 'pässword' } })
  expect<ClientOptions>().type.toBeAssignableFrom({ auth: { token: () => 'token' } })
  expect<ClientOptions>().type.toBeAssignableFrom({ auth: { token: async () => 'token' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ auth: { token: 'token' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ auth: { username: 'ana' } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ auth: { token: () => 42 } })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ followRedirects: true })
})

test('streams: client.stream() resolves to an HttpStream; ndjson<T>() is generic, events() yields ServerSentEvent', async () => {
  const client = createHttpClient({ name: 'feed', baseUrl: 'http://a:1', idleTimeout: 20_000 })
  const stream = await client.stream('/x', { method: 'POST', json: { q: 1 }, idleTimeout: 5_000, maxDuration: 60_000, resume: { maxReconnects: 3 } })
  expect(stream).type.toBe<HttpStream>()
  expect(stream.statusCode).type.toBe<number>()
  expect(stream.attempts).type.toBe<number>()
  expect(stream.body).type.toBe<Readable>()
  expect(stream.lines()).type.toBe<AsyncIterableIterator<string>>()
  expect(stream.ndjson<{ id: string }>()).type.toBe<AsyncIterableIterator<{ id: string }>>()
  expect(stream.events()).type.toBe<AsyncIterableIterator<ServerSentEvent>>()
  expect<ServerSentEvent>().type.toBe<{ event: string, data: string, id: string | undefined, retry: number | undefined }>()
  expect(stream.close()).type.toBe<void>()
  expect(client.stream).type.toBeCallableWith('/x')
  expect(client.stream).type.toBeCallableWith('/x', { resume: true, signal: AbortSignal.timeout(1) })
  expect(client.stream).type.not.toBeCallableWith('/x', { idleTimeout: '20s' })
  expect(client.stream).type.not.toBeCallableWith('/x', { resume: { maxReconnects: 'many' } })
  expect(client.stream).type.not.toBeCallableWith('/x', { resume: 5 })
  expect(client.get).type.not.toBeCallableWith('/x', { idleTimeout: 5_000 })
  expect<StreamOptions>().type.toBeAssignableFrom({ maxDuration: 1 })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ idleTimeout: 'long' })
  expect(client.stats().streams).type.toBe<number>()
  expect<StreamResumedEvent['lastEventId']>().type.toBe<string>()
  // Only client.stream() makes one.
  expect(HttpStream).type.not.toBeConstructableWith()
  const error = new InvalidResponseError({ clientName: 'feed', cause: new SyntaxError('bad') }, 3)
  expect(error.line).type.toBe<number | undefined>()
  expect(error.delivered).type.toBe<number | undefined>()
})
