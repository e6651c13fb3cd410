import { test } from 'tap'
import type { Dispatcher } from 'undici'
import { UpstreamError } from '../plugin'
import { clientFor, rejection, sendJson, upstreamFor } from './helpers/upstream'

// A client given a dispatcher of the app's own, and the pool options passed to undici.

test('a given dispatcher that throws: the call rejects with UpstreamError, nothing is left running', async (t) => {
  const broken = { dispatch (): boolean { throw new Error('dispatcher is broken') } } as unknown as Dispatcher
  const client = clientFor(t, { name: 'edges', baseUrl: 'http://127.0.0.1:9', retry: false, dispatcher: broken })
  const error = await rejection(client.get('/x'))
  t.ok(error instanceof UpstreamError, 'UpstreamError')
  t.match((error as UpstreamError).cause, { message: 'dispatcher is broken' })
  t.equal(client.stats().inFlight, 0)
  t.equal(client.stats().pool, undefined, 'a dispatcher that keeps no stats has none to show')
})

test('a given undici Agent: its per-origin stats are the client\'s pool stats; pool connector options pass through', async (t) => {
  const { Agent } = await import('undici')
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const agent = new Agent()
  t.teardown(() => agent.close())
  const viaAgent = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false, dispatcher: agent })
  await (await viaAgent.get('/x')).text()
  t.match(viaAgent.stats().pool, { connected: 1, running: 0 })
  const own = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false, pool: { autoSelectFamily: false, connectTimeout: 1_000 } })
  t.equal((await own.get('/y')).statusCode, 200)
})
