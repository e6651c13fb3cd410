import Fastify from 'fastify'
import type { AddressInfo } from 'node:net'
import { once } from 'node:events'
import type { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { request as undiciRequest } from 'undici'
import resilientHttp, { createHttpClient, type HttpClient } from '../../plugin'
import '../helpers/fastify-types'
import { startUpstream, type Upstream } from '../helpers/upstream'

// 0.2 left the attempt of an abandoned body running: its connection stayed
// busy until the attempt timeout while stats().inFlight said 0.

/** Far beyond the bound below: a connection freed by the timeout would fail the test. */
const TIMEOUT_MS = 30_000
const PROMPT_MS = 2_000

interface Streaming {
  upstream: Upstream
  /** Resolves when the upstream sees request `n` (0-based) closed before its answer ended. */
  closed(n: number): Promise<void>
}

/** An upstream that answers `/stream` with a first chunk and then holds the body open; `/ok` at once. */
async function streamingUpstream (t: Test): Promise<Streaming> {
  const closes: Array<() => void> = []
  const closedPromises: Array<Promise<void>> = []
  const expect = (n: number): Promise<void> => {
    while (closedPromises.length <= n) closedPromises.push(new Promise((resolve) => { closes.push(resolve) }))
    return closedPromises[n]
  }
  let streams = 0
  const upstream = await startUpstream((req, res) => {
    if (req.url === '/ok') {
      res.end('ok')
      return
    }
    const n = streams++
    expect(n)
    res.on('close', () => { if (!res.writableFinished) closes[n]() })
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('x'.repeat(1024))
  })
  t.teardown(() => upstream.close())
  return { upstream, closed: expect }
}

/** `promise`'s wait in ms, or a failure past `PROMPT_MS`. */
async function within (t: Test, promise: Promise<unknown>, what: string): Promise<void> {
  const started = performance.now()
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => { timer = setTimeout(resolve, PROMPT_MS, 'late') })
  const first = await Promise.race([promise, late])
  clearTimeout(timer)
  t.not(first, 'late', `${what} within ${PROMPT_MS} ms (after ${Math.round(performance.now() - started)} ms)`)
}

async function expectFreed (t: Test, client: HttpClient, streaming: Streaming): Promise<void> {
  await within(t, streaming.closed(0), 'the upstream saw the request closed')
  // The upstream may hear of the close before the client's side of the socket has: a few turns of the loop.
  for (let i = 0; i < 20 && client.stats().pool?.running !== 0; i++) await sleep(10)
  t.match(client.stats().pool, { running: 0, queued: 0 }, 'no connection is busy')
  // One connection: a call made now goes out only if the abandoned attempt freed it.
  await within(t, client.get('/ok').then(async (res) => res.text()), 'the next call had a connection')
}

function oneConnectionClient (t: Test, upstream: Upstream): HttpClient {
  const client = createHttpClient({ name: 'abandoned', baseUrl: upstream.url, timeout: TIMEOUT_MS, pool: { connections: 1 } })
  // Cut at once at the end, whatever the test left running.
  t.teardown(async () => { await Promise.race([client.close(), upstream.close()]) })
  return client
}

async function firstChunk (body: Readable): Promise<void> {
  await once(body, 'readable')
  body.read()
}

test('destroying the body cancels its attempt and frees the connection', async (t) => {
  const streaming = await streamingUpstream(t)
  const client = oneConnectionClient(t, streaming.upstream)
  const res = await client.get('/stream')
  await firstChunk(res.body)
  res.body.destroy()
  t.equal(client.stats().inFlight, 0)
  await expectFreed(t, client, streaming)
  t.equal(client.stats().circuit, 'closed')
  t.equal(client.stats().failures, 0, 'an abandoned body is not a failure')
})

test('breaking out of for await cancels the attempt and frees the connection', async (t) => {
  const streaming = await streamingUpstream(t)
  const client = oneConnectionClient(t, streaming.upstream)
  const res = await client.get('/stream')
  let bytes = 0
  for await (const chunk of res.body) {
    bytes += (chunk as Buffer).length
    if (bytes > 0) break
  }
  t.ok(bytes > 0, 'a chunk was read')
  await expectFreed(t, client, streaming)
})

test('a caller of the app going away while reply.send(res.body) streams cancels the attempt', async (t) => {
  const streaming = await streamingUpstream(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: streaming.upstream.url, timeout: TIMEOUT_MS, pool: { connections: 1 } } } })
  app.get('/proxy', async (_request, reply) => {
    const res = await app.httpClients.up.get('/stream')
    return reply.type('text/plain').send(res.body)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => streaming.upstream.close())

  const inbound = await undiciRequest(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/proxy`)
  await firstChunk(inbound.body as unknown as Readable)
  // The app's caller goes away: its socket closes mid-body.
  inbound.body.destroy()
  await expectFreed(t, app.httpClients.up, streaming)
})
