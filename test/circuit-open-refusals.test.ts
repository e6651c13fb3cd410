import Fastify from 'fastify'
import diagnosticsChannel from 'node:diagnostics_channel'
import { test } from 'tap'
import resilientHttp, { CHANNELS, CircuitOpenError, InvalidRequestError, TimeoutError } from '../plugin'
import './helpers/fastify-types'
import { clientFor, rejection } from './helpers/upstream'

test('while the circuit is open a call without options is refused like any other', async (t) => {
  const client = clientFor(t, { name: 'edges', baseUrl: 'http://127.0.0.1:9', retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } })
  await rejection(client.get('/open-it'))
  t.equal(client.stats().circuit, 'open')
  const published: unknown[] = []
  const listener = (message: unknown): void => { published.push(message) }
  diagnosticsChannel.subscribe(CHANNELS.shortCircuited, listener)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.shortCircuited, listener))

  const refused = await rejection(client.get('/x'))
  t.ok(refused instanceof CircuitOpenError, 'CircuitOpenError')
  t.match(refused, { clientName: 'edges', method: 'GET', path: '/x', statusCode: 503 })
  t.ok((refused as CircuitOpenError).remainingMs > 0 && (refused as CircuitOpenError).remainingMs <= 60_000)
  t.ok(await rejection(client.get('/../admin')) instanceof InvalidRequestError, 'a path that cannot be sent is still refused as such')
  t.ok(await rejection(client.get('/x', {})) instanceof CircuitOpenError, 'with options too')
  t.same(published, [
    { client: 'edges', method: 'GET', path: '/x', remainingMs: (refused as CircuitOpenError).remainingMs },
    { client: 'edges', method: 'GET', path: '/x', remainingMs: (published[1] as { remainingMs: number })?.remainingMs }
  ])
  t.equal(client.stats().shortCircuited, 2)
  t.equal(client.stats().requests, 3)

  // A request whose deadline has passed hears of its deadline, not of the circuit.
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { open: { baseUrl: 'http://127.0.0.1:9', retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } } } })
  app.get('/late', { config: { deadlineMs: 1 } }, async (request) => {
    await rejection(request.server.httpClients.open.get('/open-it'))
    await new Promise((resolve) => setTimeout(resolve, 20))
    const error = await rejection(request.server.httpClients.open.get('/x'))
    return { deadline: error instanceof TimeoutError && error.kind === 'deadline' }
  })
  t.same((await app.inject({ url: '/late' })).json(), { deadline: true })
})
