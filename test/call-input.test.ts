import { test } from 'tap'
import { InvalidRequestError } from '../plugin'
import { clientFor, rejection, sendJson, upstreamFor } from './helpers/upstream'

// What a call is given: a body undici refuses, a caller's abort reason, call options, paths and queries at their edges.

test('a body whose length does not match its content-length header is an InvalidRequestError, not an upstream failure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } })
  const error = await rejection(client.post('/x', { body: 'abc', headers: { 'content-length': '10' } }))
  t.ok(error instanceof InvalidRequestError, 'InvalidRequestError')
  t.equal(client.stats().circuit, 'closed', 'the breaker does not count it')
})

test('a caller may abort with any reason; a call option deadline other than false is refused', async (t) => {
  const upstream = await upstreamFor(t, () => {})
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const controller = new AbortController()
  const call = rejection(client.get('/hang', { signal: controller.signal }))
  while (upstream.hits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))
  controller.abort('the user went away')
  t.equal(await call, 'the user went away', 'rejects with the reason as given')
  const refused = await rejection(client.get('/x', { deadline: true as unknown as false }))
  t.ok(refused instanceof InvalidRequestError)
  t.match((refused as Error).message, /deadline must be false/)
})

test('call edges: Unicode white space in a path, null in a query, a budget on a call of a client without one', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => sendJson(res, 200, { url: req.url }))
  const client = clientFor(t, { name: 'q', baseUrl: upstream.url, retry: { budget: false } })
  t.ok(await rejection(client.get('/a\u1680b')) instanceof InvalidRequestError, 'OGHAM SPACE MARK')
  t.ok(await rejection(client.get('/a\u2060b')) instanceof InvalidRequestError, 'WORD JOINER')
  t.same(await (await client.get('/q', { query: { a: null, b: 1 } })).json(), { url: '/q?a=&b=1' })
  const res = await client.get('/r', { retry: { budget: { ratio: 0.5 } } })
  t.equal(res.statusCode, 200)
})
