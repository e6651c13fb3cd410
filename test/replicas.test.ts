import diagnosticsChannel from 'node:diagnostics_channel'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import { test, type Test } from 'tap'
import resilientHttp, { CHANNELS, createHttpClient, type HttpClient, InvalidOptionsError, InvalidRequestError, type ReplicaEvent } from '../plugin'
import { rejection } from './helpers/upstream'
import { eventually } from './helpers/wait'

/** How a replica answers right now. */
type Mode = 'ok' | 'unavailable'

interface Replica {
  url: string
  port: number
  mode: Mode
  /** Requests it received, by what it answered. */
  served: { ok: number, unavailable: number }
  /** Sockets open right now. */
  openSockets(): number
  /** Stops listening and drops its sockets: connecting to it is refused from then on. */
  kill(): Promise<void>
  /** Listens again on the same port, healthy. */
  revive(): Promise<void>
}

function total (replica: Replica): number {
  return replica.served.ok + replica.served.unavailable
}

/** A node:http server on 127.0.0.1 that answers 200, or 503 while its mode says so. */
async function startReplica (t: Test, name: string): Promise<Replica> {
  const sockets = new Set<Socket>()
  let server: http.Server
  const replica: Replica = {
    url: '',
    port: 0,
    mode: 'ok',
    served: { ok: 0, unavailable: 0 },
    openSockets: () => sockets.size,
    async kill () {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
    async revive () {
      await listen(replica.port)
    }
  }
  async function listen (port: number): Promise<void> {
    server = http.createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        if (replica.mode === 'unavailable') {
          replica.served.unavailable++
          res.writeHead(503, { 'content-type': 'text/plain' }).end('down')
        } else {
          replica.served.ok++
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ replica: name, host: req.headers.host, url: req.url }))
        }
      })
    })
    server.on('connection', (socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
    })
    server.listen(port, '127.0.0.1')
    await once(server, 'listening')
    replica.port = (server.address() as AddressInfo).port
    replica.url = `http://127.0.0.1:${replica.port}`
  }
  await listen(0)
  t.teardown(async () => {
    if (server.listening) await replica.kill()
  })
  return replica
}

async function startReplicas (t: Test, count: number): Promise<Replica[]> {
  const replicas: Replica[] = []
  for (let i = 0; i < count; i++) replicas.push(await startReplica(t, `r${i}`))
  return replicas
}

/** Runs `count` tasks with at most `concurrency` under way at once. */
async function runBounded (count: number, concurrency: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) await task(next++)
  }))
}

/** Collects the replica events of one client. */
function replicaEvents (t: Test, clientName: string): ReplicaEvent[] {
  const events: ReplicaEvent[] = []
  const listener = (message: unknown): void => {
    const event = message as ReplicaEvent
    if (event.client === clientName) events.push(event)
  }
  diagnosticsChannel.subscribe(CHANNELS.replica, listener)
  t.teardown(() => { diagnosticsChannel.unsubscribe(CHANNELS.replica, listener) })
  return events
}

function makeClient (t: Test, name: string, replicas: Replica[], options: Record<string, unknown> = {}): HttpClient {
  const client = createHttpClient({
    name,
    baseUrl: replicas.map((replica) => `${replica.url}/v1`),
    retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false },
    ...options
  })
  t.teardown(() => client.close())
  return client
}

/** Makes `count` GETs one after another; each must end with a 200. Returns how many did not. */
async function sequentialGets (client: HttpClient, count: number): Promise<number> {
  let notOk = 0
  for (let i = 0; i < count; i++) {
    const response = await client.get(`/item/${i}`)
    await response.text()
    if (response.statusCode !== 200) notOk++
  }
  return notOk
}

test('traffic spreads over three replicas, each answering with its own Host and the base path', async (t) => {
  const replicas = await startReplicas(t, 3)
  const client = makeClient(t, 'spread', replicas)
  const seen = new Set<string>()
  const calls = 3_000
  await runBounded(calls, 32, async (i) => {
    const response = await client.get(`/item/${i}`)
    const body = await response.json<{ replica: string, host: string, url: string }>()
    const replica = replicas[Number(body.replica.slice(1))]
    if (body.host !== `127.0.0.1:${replica.port}` || body.url !== `/v1/item/${i}`) seen.add(`${body.replica} ${body.host} ${body.url}`)
  })
  t.same([...seen], [], 'each replica is sent its own Host header and the path under the shared base path')
  for (const [i, replica] of replicas.entries()) {
    const share = total(replica) / calls
    t.ok(share >= 0.2 && share <= 0.46, `replica ${i} got ${(share * 100).toFixed(1)} % of the calls`)
  }
  const stats = client.stats()
  t.equal(replicas.reduce((sum, replica) => sum + total(replica), 0), stats.requests + stats.retries, 'every attempt reached one of the replicas')
  t.equal(stats.requests, calls)
  t.same(stats.replicas.map((replica) => replica.origin), replicas.map((replica) => replica.url))
  t.ok(stats.replicas.every((replica) => !replica.ejected && replica.inFlight === 0 && replica.failures === 0))
})

test('calls made one at a time spread too: idle replicas are chosen at random, not in order', async (t) => {
  const replicas = await startReplicas(t, 3)
  const client = makeClient(t, 'idleSpread', replicas)
  const calls = 600
  t.equal(await sequentialGets(client, calls), 0)
  for (const [i, replica] of replicas.entries()) {
    const share = total(replica) / calls
    t.ok(share >= 0.2 && share <= 0.46, `replica ${i} got ${(share * 100).toFixed(1)} % of the calls`)
  }
})

test('a replica answering 503 is ejected after consecutiveFailures, its calls retried elsewhere, and serves again later', async (t) => {
  const replicas = await startReplicas(t, 3)
  const events = replicaEvents(t, 'eject503')
  const client = makeClient(t, 'eject503', replicas, { outlierDetection: { consecutiveFailures: 3, baseEjectionMs: 300 } })
  t.equal(await sequentialGets(client, 30), 0, 'warm-up')
  const bad = replicas[1]
  bad.mode = 'unavailable'
  const before = client.stats()
  const notOk = await sequentialGets(client, 60)
  t.equal(notOk, 0, 'no failure reaches the caller: each 503 is retried on another replica')
  t.equal(bad.served.unavailable, 3, 'one call at a time: exactly consecutiveFailures 503s before it is out')
  const ejected = events.filter((event) => event.ejected)
  t.equal(ejected.length, 1)
  t.match(ejected[0], { origin: bad.url, ejected: true, ejectionMs: 300, ejections: 1 })
  const stats = client.stats()
  t.match(stats.replicas[1], { origin: bad.url, ejected: true, ejections: 1, failures: 3 })
  t.equal(stats.retries - before.retries, 3, 'one retry per 503')
  t.equal(stats.failures, 0)

  // Back to health; once the ejection time is over it is chosen again.
  bad.mode = 'ok'
  const servedBefore = bad.served.ok
  await sleep(350)
  t.equal(await sequentialGets(client, 60), 0)
  t.ok(bad.served.ok > servedBefore, `it serves again (${bad.served.ok - servedBefore} calls)`)
  t.match(events.at(-1), { origin: bad.url, ejected: false, ejections: 1 })
  t.equal(client.stats().replicas[1].ejected, false)

  // A second ejection lasts twice as long.
  bad.mode = 'unavailable'
  t.equal(await sequentialGets(client, 40), 0)
  t.match(events.filter((event) => event.ejected).at(-1), { origin: bad.url, ejectionMs: 600, ejections: 2 })
})

test('a killed replica (connection refused) is ejected, its calls land elsewhere, and it serves again once back', async (t) => {
  const replicas = await startReplicas(t, 3)
  const events = replicaEvents(t, 'ejectKilled')
  const client = makeClient(t, 'ejectKilled', replicas, { outlierDetection: { consecutiveFailures: 3, baseEjectionMs: 300 } })
  t.equal(await sequentialGets(client, 30), 0, 'warm-up: every replica has sockets open')
  const bad = replicas[2]
  await bad.kill()
  t.equal(await sequentialGets(client, 60), 0, 'no failure reaches the caller')
  const ejected = events.filter((event) => event.ejected)
  t.equal(ejected.length, 1)
  t.match(ejected[0], { origin: bad.url, ejectionMs: 300, ejections: 1 })
  const stats = client.stats()
  t.match(stats.replicas[2], { ejected: true, ejections: 1 })
  t.ok(stats.replicas[2].failures >= 3 && stats.replicas[2].failures <= 4, `failures before ejection: ${stats.replicas[2].failures} (a socket closed under a request may add one)`)
  t.equal(stats.failures, 0)

  await bad.revive()
  const servedBefore = bad.served.ok
  await sleep(350)
  t.equal(await sequentialGets(client, 60), 0)
  t.ok(bad.served.ok > servedBefore, `it serves again once its ejection is over (${bad.served.ok - servedBefore} calls)`)
  t.match(events.at(-1), { origin: bad.url, ejected: false })
})

test('with two of three replicas failing and maxEjectedPercent 50, only one is ejected', async (t) => {
  const replicas = await startReplicas(t, 3)
  const events = replicaEvents(t, 'halfOut')
  const client = makeClient(t, 'halfOut', replicas, {
    outlierDetection: { consecutiveFailures: 2, baseEjectionMs: 60_000, maxEjectedPercent: 50 },
    circuitBreaker: false
  })
  replicas[0].mode = 'unavailable'
  replicas[1].mode = 'unavailable'
  // A call tries each replica once at most: with three attempts it always reaches the healthy one.
  t.equal(await sequentialGets(client, 100), 0, 'every call is answered by the healthy replica in the end')
  const stats = client.stats()
  t.equal(stats.replicas.filter((replica) => replica.ejected).length, 1, 'one replica out of three is at most 50 %')
  t.equal(events.filter((event) => event.ejected).length, 1, 'one ejection published')
  const stillIn = stats.replicas.findIndex((replica, i) => i < 2 && !replica.ejected)
  t.ok(replicas[stillIn].served.unavailable > 2, 'the failing replica left in keeps being tried')
  t.equal(stats.replicas[2].ejected, false)
})

test('no replica is ejected while all fail: never all of them out', async (t) => {
  const replicas = await startReplicas(t, 2)
  const client = makeClient(t, 'allBad', replicas, {
    outlierDetection: { consecutiveFailures: 1, baseEjectionMs: 60_000, maxEjectedPercent: 100 },
    circuitBreaker: false
  })
  for (const replica of replicas) replica.mode = 'unavailable'
  for (let i = 0; i < 10; i++) {
    const response = await client.get('/x')
    await response.text()
    t.equal(response.statusCode, 503)
  }
  t.equal(client.stats().replicas.filter((replica) => replica.ejected).length, 1, 'one of two stays in, even at 100 %')
})

test('a path naming another host is refused whatever its form: the decoy never receives a request', async (t) => {
  const replicas = await startReplicas(t, 3)
  const decoy = await startReplica(t, 'decoy')
  const client = makeClient(t, 'pinned', replicas)
  const host = `127.0.0.1:${decoy.port}`
  const paths = [
    `//${host}/steal`, `///${host}/steal`, `/\\${host}/steal`, `\\\\${host}\\steal`, `\\/${host}/steal`,
    `http://${host}/steal`, `https://${host}/steal`, `HTTP://${host}/steal`, `http:${host}/steal`, `${host}/steal`,
    ` //${host}/steal`, `\t//${host}/steal`, `/x\\..\\..\\${host}`, `/%2e%2e/%2e%2e/${host}`, `/../${host}`,
    `/ok\r\nHost: ${host}`, `/ok\nHost: ${host}`, `@${host}/steal`, `?//${host}`, `#//${host}`
  ]
  for (const path of paths) {
    for (const call of [() => client.get(path), () => client.request({ method: 'POST', path, json: {} })]) {
      const error = await rejection(call())
      t.ok(error instanceof InvalidRequestError, `${JSON.stringify(path)} is refused`)
    }
  }
  t.equal(total(decoy), 0, 'the decoy saw nothing')
  t.same(replicas.map(total), [0, 0, 0], 'nothing was sent anywhere')
  t.equal(client.stats().requests, 0, 'refused before the call starts')
})

test('per-replica figures add up: requests on the servers = attempts of the client, failures = 503s served', async (t) => {
  const replicas = await startReplicas(t, 3)
  const client = makeClient(t, 'sums', replicas, {
    outlierDetection: { consecutiveFailures: 4, baseEjectionMs: 200 },
    circuitBreaker: false
  })
  let attempts = 0
  let flips = 0
  await runBounded(600, 16, async (i) => {
    // Replicas turn unhealthy and healthy again as the calls go on.
    if (i % 50 === 0) {
      flips++
      replicas[flips % 3].mode = 'unavailable'
      replicas[(flips + 1) % 3].mode = 'ok'
    }
    const response = await client.get(`/n/${i}`)
    await response.text()
    attempts += response.attempts
  })
  const stats = client.stats()
  const served = replicas.reduce((sum, replica) => sum + total(replica), 0)
  t.equal(served, attempts, 'requests the servers saw = the sum of response.attempts')
  t.equal(served, stats.requests + stats.retries, '= calls + retries in stats()')
  for (const [i, replica] of replicas.entries()) {
    t.equal(stats.replicas[i].failures, replica.served.unavailable, `replica ${i}: failures = the 503s it served`)
  }
  t.ok(replicas.reduce((sum, replica) => sum + replica.served.unavailable, 0) > 0, 'some attempts did fail')
})

test('replicas with different base paths are refused, naming baseUrl', async (t) => {
  const bad = ['http://127.0.0.1:1/v1', 'http://127.0.0.2:1/v2']
  const direct = (() => { try { createHttpClient({ name: 'mixed', baseUrl: bad }); return null } catch (error) { return error } })()
  t.ok(direct instanceof InvalidOptionsError)
  t.equal((direct as InvalidOptionsError).option, 'baseUrl')
  t.match((direct as Error).message, /base path/)

  const app = Fastify()
  t.teardown(() => app.close())
  const error = await rejection(app.register(resilientHttp, { clients: { mixed: { baseUrl: bad } } }).ready())
  t.ok(error instanceof InvalidOptionsError)
  t.equal((error as InvalidOptionsError).option, 'clients.mixed.baseUrl')
  const trailing = (() => { try { createHttpClient({ name: 'slash', baseUrl: ['http://127.0.0.1:1/v1/', 'http://127.0.0.2:1/v1'] }); return null } catch (error) { return error } })()
  t.equal(trailing, null, 'a trailing slash is the same base path')
})

test('close() closes the pool of every replica: the servers see their sockets closed, the pools are idle', async (t) => {
  const replicas = await startReplicas(t, 3)
  const client = createHttpClient({ name: 'closing', baseUrl: replicas.map((replica) => replica.url), retry: false })
  await runBounded(300, 24, async (i) => {
    const response = await client.get(`/c/${i}`)
    await response.text()
  })
  t.ok(replicas.every((replica) => replica.openSockets() > 0), `every replica has keep-alive sockets: ${replicas.map((replica) => replica.openSockets()).join(', ')}`)
  const before = client.stats().pool
  t.ok(before !== undefined && before.connected >= 3, 'the pools are summed over the replicas')
  await client.close()
  t.ok(await eventually(() => replicas.every((replica) => replica.openSockets() === 0), 3_000), 'every server saw its sockets closed')
  t.match(client.stats().pool, { connected: 0, running: 0, pending: 0, queued: 0 })
  t.equal(client.stats().inFlight, 0)
})
