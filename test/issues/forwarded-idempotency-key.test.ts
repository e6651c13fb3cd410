import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp from '../../plugin'
import '../helpers/fastify-types'
import { startUpstream } from '../helpers/upstream'

// With `propagateHeaders: ['idempotency-key']` and an inbound Idempotency-Key,
// `post(path)` made 1 attempt against a failing upstream and `post(path, {})`
// made 3: the two were prepared by two copies of one result, which disagreed
// on whether the forwarded key counts.
test('a forwarded Idempotency-Key makes a POST retryable, with or without options', async (t) => {
  const upstream = await startUpstream((_req, res) => {
    res.statusCode = 503
    res.end('busy')
  })
  t.teardown(() => upstream.close())
  const app = Fastify()
  await app.register(resilientHttp, {
    propagateHeaders: ['idempotency-key'],
    clients: { payments: { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 1, jitter: 'none', budget: false }, circuitBreaker: false } }
  })
  app.post('/charge', async (request) => {
    const client = request.server.httpClients.payments
    const bare = await client.post('/bare')
    const empty = await client.post('/empty', {})
    return { bare: bare.attempts, empty: empty.attempts }
  })
  t.teardown(() => app.close())

  const reply = await app.inject({ method: 'POST', url: '/charge', headers: { 'idempotency-key': 'order-7' } })
  t.same(reply.json(), { bare: 3, empty: 3 }, 'retried alike')
  t.same(upstream.hits.map((hit) => hit.url), ['/bare', '/bare', '/bare', '/empty', '/empty', '/empty'])
  t.ok(upstream.hits.every((hit) => hit.headers['idempotency-key'] === 'order-7'), 'the same key on every attempt')

  const without = await app.inject({ method: 'POST', url: '/charge' })
  t.same(without.json(), { bare: 1, empty: 1 }, 'without a key, a POST answered 503 is not retried')
})
