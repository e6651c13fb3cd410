import diagnosticsChannel from 'node:diagnostics_channel'
import net from 'node:net'
import { test, type Test } from 'tap'
import { Client, type Dispatcher, Pool } from 'undici'
import { CHANNELS, createHttpClient, type HttpClient, InvalidOptionsError, UpstreamError } from '../plugin'
import { clientFor, refusedPort, rejection, sendJson, type Upstream, upstreamFor } from './helpers/upstream'
import { eventually } from './helpers/wait'

// A client's own connections: undici Clients it makes as needed, up to
// `pool.connections`, each taking `pool.pipelining` attempts at once; the
// attempts beyond wait in the client's admission queue.

function poolClient (t: Test, baseUrl: string, pool: Record<string, unknown>, options: Record<string, unknown> = {}): HttpClient {
  return clientFor(t, { name: 'conns', baseUrl, retry: false, pool, ...options })
}

/** An upstream that holds every request until `release()`, then answers each with the port it came from. */
async function heldUpstream (t: Test): Promise<Upstream & { held(): number, release(): void }> {
  const waiting: Array<() => void> = []
  const upstream = await upstreamFor(t, (req, res) => {
    waiting.push(() => sendJson(res, 200, { port: req.socket.remotePort }))
  })
  return Object.assign(upstream, {
    held: () => waiting.length,
    release () { for (const answer of waiting.splice(0)) answer() }
  })
}

/** `pool.clientTtl` in the tests below, and a wait that outlasts it. */
const TTL_MS = 300
const PAST_TTL_MS = 400

type ConnectCallback = (error: Error | null, socket: net.Socket | null) => void

/**
 * A `pool.connect` whose first connect is refused, at once or (`later`) on the
 * next turn of the loop as a real socket's would be; the others connect.
 */
function refuseFirstConnect (later: boolean): (options: { hostname: string, port: string }, callback: ConnectCallback) => void {
  let connects = 0
  return (options, callback) => {
    if (++connects === 1) {
      const refuse = (): void => callback(Object.assign(new Error('connect refused by the test'), { code: 'ECONNREFUSED' }), null)
      if (later) setImmediate(refuse)
      else refuse()
      return
    }
    const socket = net.connect({ host: options.hostname, port: Number(options.port) })
    socket.once('connect', () => callback(null, socket)).once('error', (error) => callback(error, null))
  }
}

/** A `pool.factory` that makes undici Clients and keeps them in `made`. */
function countingFactory (made: Client[]): (origin: URL, options: Client.Options) => Dispatcher {
  return (origin, options) => {
    const client = new Client(origin, options)
    made.push(client)
    return client
  }
}

test('attempts beyond the connections wait in the queue, counted as queued, and go out as connections free up', async (t) => {
  const upstream = await heldUpstream(t)
  const client = poolClient(t, upstream.url, { connections: 2 })
  const calls = Array.from({ length: 5 }, async () => (await client.get('/held')).json())
  t.ok(await eventually(() => upstream.held() === 2), 'two requests reach the upstream')
  t.match(client.stats().pool, { connected: 2, running: 2, queued: 3, pending: 3, size: 5, free: 0 })
  upstream.release()
  t.ok(await eventually(() => upstream.held() === 2), 'two more go out as the first two end')
  upstream.release()
  t.ok(await eventually(() => upstream.held() === 1), 'then the last one')
  upstream.release()
  await Promise.all(calls)
  t.equal(upstream.connections(), 2, 'on the same two sockets all along')
  t.match(client.stats().pool, { connected: 2, running: 0, queued: 0, free: 2 })
})

test('pipelining: a connection takes that many attempts at once before another is made', async (t) => {
  const upstream = await heldUpstream(t)
  const client = poolClient(t, upstream.url, { connections: 2, pipelining: 3 })
  const calls = Array.from({ length: 4 }, async () => (await client.get('/held')).json())
  // A pipelined request reaches Node's server only once the one before it is answered.
  t.ok(await eventually(() => upstream.held() === 2), 'the heads of both connections reach the upstream')
  t.equal(upstream.connections(), 2)
  t.match(client.stats().pool, { connected: 2, queued: 0, size: 4 })
  for (let i = 0; i < 10 && upstream.hits.length < 4; i++) {
    upstream.release()
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  upstream.release()
  await Promise.all(calls)
  t.equal(upstream.hits.length, 4)
  t.equal(upstream.connections(), 2, 'three went on the first connection, one on the second')
})

test('a connection whose connect failed is not used again: the next attempt gets a new one', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const made: Client[] = []
  const client = poolClient(t, upstream.url, { connections: 1, connect: refuseFirstConnect(false), factory: countingFactory(made) })
  const error = await rejection(client.get('/first'))
  t.ok(error instanceof UpstreamError, 'the refused connect fails the attempt')
  t.equal((await client.get('/second')).statusCode, 200, 'the next call is answered')
  t.equal(made.length, 2, 'on a new connection: the failed one is not taken again, though `connections` is 1')
  t.match(client.stats().pool, { connected: 1, running: 0 })
})

test('an attempt queued behind a failed connect goes out on a new connection', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const made: Client[] = []
  // Refused on the next turn of the loop: the second call is queued by then.
  const client = poolClient(t, upstream.url, { connections: 1, connect: refuseFirstConnect(true), factory: countingFactory(made) })
  const first = rejection(client.get('/first'))
  const second = client.get('/second')
  t.match(client.stats().pool, { queued: 1 }, 'the second call waits for the only connection')
  t.ok(await first instanceof UpstreamError, 'the refused connect fails the first attempt')
  t.equal((await second).statusCode, 200, 'the queued one is answered')
  t.equal(made.length, 2, 'on a new connection: the failed one is not taken again')
  t.equal((await client.get('/third')).statusCode, 200)
  t.equal(made.length, 2, 'and the new one is kept')
})

test('clientTtl with pipelining: a connection past its ttl with an attempt on it takes no more, and finishes that one', async (t) => {
  let answerFirst: () => void = () => {}
  const upstream = await upstreamFor(t, (req, res) => {
    const answer = (): void => sendJson(res, 200, { port: req.socket.remotePort })
    if (req.url === '/slow') answerFirst = answer
    else answer()
  })
  // A ttl long enough that the new connection outlives the rest of the test on a busy machine.
  const client = poolClient(t, upstream.url, { connections: 1, pipelining: 2, clientTtl: TTL_MS })
  const slow = client.get('/slow')
  t.ok(await eventually(() => upstream.hits.length === 1), 'the slow call reached the upstream')
  await new Promise((resolve) => setTimeout(resolve, PAST_TTL_MS))
  const quick = await (await client.get('/quick')).json() as { port: number }
  answerFirst()
  const slowBody = await (await slow).json() as { port: number }
  t.not(quick.port, slowBody.port, 'the call after the ttl went on a new connection')
  t.ok(await eventually(() => upstream.connections() === 2 && client.stats().pool?.connected === 1), 'the old one closed once its call was answered')
  t.equal((await client.get('/again')).statusCode, 200)
  t.equal(upstream.connections(), 2)
})

test('a call made synchronously while undici reports a failed connect waits for undici to finish, then goes out', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const client = poolClient(t, upstream.url, { connections: 1, connect: refuseFirstConnect(true) }, { retry: { backoffInitialMs: 1, backoffMaxMs: 1, budget: false } })
  // A retry event is published from inside undici's connect-error callback; a subscriber calls at once.
  let fromSubscriber: Promise<number> | undefined
  const onRetry = (): void => {
    fromSubscriber ??= client.get('/from-subscriber').then((res) => res.statusCode)
  }
  diagnosticsChannel.subscribe(CHANNELS.retry, onRetry)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.retry, onRetry))
  t.equal((await client.get('/retried')).statusCode, 200, 'the call is answered on its retry')
  t.equal(await fromSubscriber, 200, 'and so is the call made from the subscriber')
})

test('failed connects over and over do not pile up connections', async (t) => {
  const port = await refusedPort()
  const made: Client[] = []
  const client = poolClient(t, `http://127.0.0.1:${port}`, { connections: 2, factory: countingFactory(made) }, { circuitBreaker: false })
  for (let i = 0; i < 20; i++) t.ok(await rejection(client.get('/refused')) instanceof UpstreamError)
  t.equal(made.length, 20, 'each refused connect retires its connection')
  t.match(client.stats().pool, { connected: 0, running: 0, queued: 0, size: 0 })
})

test('clientTtl: a connection older than it is closed when it would next be taken', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => sendJson(res, 200, { port: req.socket.remotePort }))
  const client = poolClient(t, upstream.url, { connections: 1, clientTtl: TTL_MS })
  const first = await (await client.get('/a')).json() as { port: number }
  const again = await (await client.get('/b')).json() as { port: number }
  t.equal(again.port, first.port, 'within the ttl the socket is kept')
  await new Promise((resolve) => setTimeout(resolve, PAST_TTL_MS))
  const later = await (await client.get('/c')).json() as { port: number }
  t.not(later.port, first.port, 'past the ttl a new connection is made')
  t.ok(await eventually(() => client.stats().pool?.connected === 1), 'and the old one closed')
})

test('clientTtl runs on the monotonic clock: the system clock stepping back does not keep an old connection', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => sendJson(res, 200, { port: req.socket.remotePort }))
  const client = poolClient(t, upstream.url, { connections: 1, clientTtl: TTL_MS })
  const first = await (await client.get('/a')).json() as { port: number }
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  Date.now = () => realNow() - 3_600_000
  await new Promise((resolve) => setTimeout(resolve, PAST_TTL_MS))
  const later = await (await client.get('/b')).json() as { port: number }
  t.not(later.port, first.port, 'past the ttl a new connection is made')
})

test('a factory given in pool makes the connections', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const origins: string[] = []
  const client = poolClient(t, upstream.url, {
    connections: 3,
    factory (origin: URL, options: Client.Options): Dispatcher {
      origins.push(origin.origin)
      return new Client(origin, options)
    }
  })
  await Promise.all(Array.from({ length: 3 }, async () => (await client.get('/x')).json()))
  t.same(origins, [upstream.url, upstream.url, upstream.url], 'one per connection, for the client\'s origin')
})

test('a factory whose dispatcher keeps no stats: the pool stats count it as nothing', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const client = poolClient(t, upstream.url, {
    factory (origin: URL, options: Client.Options): Dispatcher {
      const inner = new Client(origin, options)
      // A dispatcher with only what undici's handler API needs.
      return Object.assign(Object.create(null), {
        dispatch: inner.dispatch.bind(inner),
        on: inner.on.bind(inner),
        close: inner.close.bind(inner),
        destroy: inner.destroy.bind(inner)
      }) as Dispatcher
    }
  })
  t.equal((await client.get('/x')).statusCode, 200)
  t.match(client.stats().pool, { connected: 0, running: 0, size: 0 })
})

test('a given undici Pool: its own stats are the client\'s pool stats', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { ok: true }))
  const pool = new Pool(upstream.url, { connections: 2 })
  t.teardown(() => pool.close())
  const client = poolClient(t, upstream.url, {}, { dispatcher: pool })
  t.equal((await client.get('/x')).statusCode, 200)
  t.match(client.stats().pool, { connected: 1, running: 0, queued: 0 })
})

test('pool options undici\'s Pool checks itself fail registration, naming pool', async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['connections not a number', { connections: '4' }],
    ['connections infinite', { connections: Infinity }],
    ['factory not a function', { factory: 'client' }],
    ['clientTtl negative', { clientTtl: -1 }],
    ['clientTtl not a number', { clientTtl: '1s' }]
  ]
  for (const [what, pool] of cases) {
    let error: unknown
    try {
      createHttpClient({ name: 'conns', baseUrl: 'http://127.0.0.1:9', pool })
    } catch (caught) {
      error = caught
    }
    t.ok(error instanceof InvalidOptionsError, `${what}: InvalidOptionsError`)
    t.match((error as InvalidOptionsError).message, /pool/, `${what}: names pool`)
  }
  t.end()
})
