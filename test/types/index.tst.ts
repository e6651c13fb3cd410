import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import resilientHttp, {
  createHttpClient, requestIdGenerator, resilientHttp as named,
  CircuitOpenError, HttpClientError, TimeoutError, InvalidOptionsError, HttpStatusError,
  type HttpClient, type HttpResponse, type ClientStats, type PluginOptions
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
  if (error instanceof CircuitOpenError) expect(error.remainingMs).type.toBe<number>()
  if (error instanceof TimeoutError) expect(error.kind).type.toBe<'attempt' | 'total'>()
  if (error instanceof InvalidOptionsError) expect(error.option).type.toBe<string>()
  if (error instanceof HttpStatusError) expect(error.statusCode).type.toBe<number>()
  if (error instanceof HttpClientError) expect(error.code).type.toBe<string>()
})

test('plugin options', () => {
  expect({ clients: { a: { baseUrl: 'http://x' } }, propagateHeaders: ['traceparent'] }).type.toBeAssignableTo<PluginOptions>()
  expect({ clients: { a: { baseUrl: 'http://x' } }, echoRequestId: 'yes' }).type.not.toBeAssignableTo<PluginOptions>()
})
