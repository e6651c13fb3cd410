import Redis from 'ioredis'
import { test, type Test } from 'tap'
import { RateLimitedError } from '../lib/errors'
import { createHttpClient, type HttpClient } from '../lib/api/http-client'
import type { RateLimitOptions } from '../lib/types'
import { CHANNELS, type RateLimitPausedEvent } from '../lib/telemetry/events'
import { type RedisServer, startRedis } from './helpers/redis-server'
import { timedUpstream, type Step } from './helpers/timed-upstream'
import { rejection } from './helpers/upstream'
import { eventually, published } from './helpers/wait'

function redisClient (t: Test, server: RedisServer): Redis {
  // As an app would make it: reconnecting, commands queued while disconnected.
  const redis = new Redis({ port: server.port, host: '127.0.0.1', retryStrategy: () => 50 })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  return redis
}

function fleetClient (t: Test, url: string, rateLimit: RateLimitOptions, name = 'maps'): HttpClient {
  const client = createHttpClient({ name, baseUrl: url, retry: false, rateLimit })
  t.teardown(() => client.close())
  return client
}

async function outcomes (calls: Array<Promise<unknown>>): Promise<{ sent: number, refused: number }> {
  let sent = 0
  let refused = 0
  for (const error of await Promise.all(calls.map(rejection))) {
    if (error === null) sent++
    else if (error instanceof RateLimitedError) refused++
    else throw error
  }
  return { sent, refused }
}

test('two clients on one key share one bucket: a burst of 10 between them, not 10 each', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  // A busy machine's slow answer must not send an instance to its own fallback limit: this is about the shared one.
  const limit = { perSecond: 2, burst: 10, maxWaitMs: 0, key: 'frh:test:shared', lease: 2, redisTimeoutMs: 2_000 }
  const a = fleetClient(t, upstream.url, { ...limit, redis: redisClient(t, server) }, 'a')
  const b = fleetClient(t, upstream.url, { ...limit, redis: redisClient(t, server) }, 'b')
  const started = Date.now()
  const counts = { a: 0, b: 0 }
  for (let i = 0; i < 8; i++) {
    counts.a += (await outcomes([a.get('/a')])).sent
    counts.b += (await outcomes([b.get('/b')])).sent
  }
  const elapsedS = (Date.now() - started) / 1000
  // burst + perSecond × span, and a lease per instance at most on top.
  t.ok(upstream.hits.length <= 10 + Math.ceil(2 * elapsedS) + 2 * 2, `${upstream.hits.length} sent in ${elapsedS} s`)
  t.ok(upstream.hits.length >= 10, `the burst was used (${upstream.hits.length})`)
  t.ok(counts.a > 0 && counts.b > 0, `both instances had tokens (${counts.a}, ${counts.b})`)
  t.equal(a.stats().rateLimited + b.stats().rateLimited, 16 - upstream.hits.length)
})

test('calls wait for tokens that the fleet\'s bucket grants over time', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  const client = fleetClient(t, upstream.url, { perSecond: 20, burst: 1, maxWaitMs: 2_000, redis: redisClient(t, server) })
  const started = Date.now()
  const result = await outcomes(Array.from({ length: 10 }, () => client.get('/')))
  const elapsed = Date.now() - started
  t.same(result, { sent: 10, refused: 0 })
  t.ok(elapsed >= 400, `ten calls at 20 a second, one at once: at least 450 ms (${elapsed})`)
  t.equal(client.stats().rateLimitWaits, 10, 'the first waited for the lease from Redis')
})

test('a 429 with Retry-After pauses the whole fleet: every instance learns it and sends nothing until it ends', async (t) => {
  const server = await startRedis(t)
  let pausedAt = 0
  const upstream = await timedUpstream(t, (index): Step => {
    if (index !== 3) return { body: 'ok' }
    pausedAt = Date.now()
    return { status: 429, headers: { 'retry-after': '1' } }
  })
  const paused = published<RateLimitPausedEvent>(t, CHANNELS.rateLimitPaused)
  const limit = { perSecond: 100, maxWaitMs: 0, key: 'frh:test:pause', redisTimeoutMs: 2_000 }
  const a = fleetClient(t, upstream.url, { ...limit, redis: redisClient(t, server) }, 'a')
  const b = fleetClient(t, upstream.url, { ...limit, redis: redisClient(t, server) }, 'b')
  for (let i = 0; i < 4; i++) await a.get('/a')
  t.same(paused, [{ client: 'a', pausedMs: 1_000, reason: 'retry-after' }])
  // b holds a lease taken before the pause, or none: either way it learns within 100 ms.
  await new Promise((resolve) => setTimeout(resolve, 100))
  const during = await outcomes([b.get('/b'), a.get('/a'), b.get('/b')])
  t.same(during, { sent: 0, refused: 3 }, 'refused by both instances')
  t.same(paused[1], { client: 'b', pausedMs: paused[1]?.pausedMs, reason: 'fleet' }, 'b logged what it learnt')
  t.equal(upstream.hits.length, 4, 'nothing reached the upstream during the pause')
  t.ok(await eventually(() => Date.now() - pausedAt > 1_100, 2_000))
  let after = { sent: 0, refused: 0 }
  for (let i = 0; i < 20 && after.sent === 0; i++) {
    after = await outcomes([b.get('/b')])
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  t.equal(after.sent, 1, 'b sends again once the pause is over')
})

test('Redis stopped mid-run: \'local\' keeps a limit of localPerSecond, \'refuse\' refuses; both use Redis again once it is back', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  const redis = redisClient(t, server)
  const local = fleetClient(t, upstream.url, { perSecond: 1_000, burst: 5, maxWaitMs: 0, redis, key: 'frh:test:local', localPerSecond: 2, redisTimeoutMs: 50 }, 'local')
  const refuse = fleetClient(t, upstream.url, { perSecond: 1_000, maxWaitMs: 0, redis, key: 'frh:test:refuse', onRedisError: 'refuse', redisTimeoutMs: 50 }, 'refuse')
  t.same(await outcomes([local.get('/'), refuse.get('/')]), { sent: 2, refused: 0 }, 'through Redis')

  await server.stop()
  // The first calls after the outage find it out, within redisTimeoutMs.
  t.same(await outcomes([local.get('/')]), { sent: 1, refused: 0 }, '\'local\': sent under this instance\'s own bucket')
  t.same(await outcomes([refuse.get('/')]), { sent: 0, refused: 1 }, '\'refuse\': refused')
  const duringLocal = await outcomes(Array.from({ length: 5 }, () => local.get('/')))
  t.ok(duringLocal.sent <= 1, `'local': at localPerSecond (${duringLocal.sent} more sent)`)
  const duringRefuse = await rejection(refuse.get('/'))
  t.type(duringRefuse, RateLimitedError, '\'refuse\': refused')
  t.ok((duringRefuse as RateLimitedError).retryAfterMs <= 1_000, 'until Redis is asked again')

  await server.start()
  t.ok(await eventually(() => redis.status === 'ready', 5_000), 'the app\'s client reconnected by itself')
  await new Promise((resolve) => setTimeout(resolve, 1_000))
  const after = await outcomes([refuse.get('/'), refuse.get('/')])
  t.ok(after.sent >= 1, `'refuse' sends again through Redis (${after.sent})`)
})

test('the client never connects or closes the Redis client it is given', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  const redis = redisClient(t, server)
  const touched: string[] = []
  for (const method of ['connect', 'disconnect', 'quit', 'duplicate'] as const) {
    const original = redis[method].bind(redis) as (...args: unknown[]) => unknown
    ;(redis as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
      touched.push(method)
      return original(...args)
    }
  }
  const client = createHttpClient({ name: 'maps', baseUrl: upstream.url, rateLimit: { perSecond: 10, redis } })
  await client.get('/')
  await client.close()
  t.same(touched, [])
  t.equal(await redis.ping(), 'PONG', 'still the app\'s, connected')
})

test('a fleet\'s calls wait out a pause and a Redis error; a shorter pause does not shorten a longer one', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, (index): Step => {
    if (index === 0) return { status: 429, headers: { 'retry-after': '1' }, delayMs: 50 }
    if (index === 1) return { status: 429, headers: { 'retry-after': '0', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '0.5' }, delayMs: 100 }
    return { body: 'ok' }
  })
  const warnings: string[] = []
  const redis = redisClient(t, server)
  const client = createHttpClient({
    name: 'maps',
    baseUrl: upstream.url,
    retry: false,
    logger: { info () {}, warn (_object: object, message?: string) { warnings.push(String(message)) } },
    rateLimit: { perSecond: 20, burst: 2, maxWaitMs: 2_000, redis, key: 'frh:test:waits', localPerSecond: 20 }
  })
  t.teardown(() => client.close())
  const paused = published<RateLimitPausedEvent>(t, CHANNELS.rateLimitPaused)
  const [first, second] = await Promise.all([client.get('/1'), client.get('/2')])
  t.same([first.statusCode, second.statusCode], [429, 429])
  t.same(paused.map((event) => event.pausedMs), [1_000], 'the second, shorter pause changed nothing')
  const started = Date.now()
  t.equal((await client.get('/3')).statusCode, 200, 'waited out the pause')
  t.ok(Date.now() - started >= 700, 'until it ended')

  // Redis fails the script (the key holds something else): this instance keeps its own limit.
  await redis.set('frh:test:waits', 'not a bucket')
  const [a, b] = await Promise.all([client.get('/4'), client.get('/5')])
  t.same([a.statusCode, b.statusCode], [200, 200], 'sent under the local limit, the second after waiting its turn')
  t.ok(warnings.some((line) => /Redis unreachable \(WRONGTYPE/.test(line)), warnings.join('\n'))
})

test('close while Redis has not answered yet leaves no timer and drops the answer', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  const redis = redisClient(t, server)
  const client = createHttpClient({ name: 'maps', baseUrl: upstream.url, rateLimit: { perSecond: 20, redis, key: 'frh:test:close' } })
  const call = rejection(client.get('/'))
  await client.close()
  t.match(await call, { code: 'FRH_CLIENT_CLOSED' })
  t.equal(upstream.hits.length, 0)
})

test('a drained fleet bucket refuses at once, without asking Redis again until a token is within reach', async (t) => {
  const server = await startRedis(t)
  const upstream = await timedUpstream(t, () => ({ body: 'ok' }))
  const redis = redisClient(t, server)
  const options = { perSecond: 2, burst: 1, maxWaitMs: 100, key: 'frh:test:drained', redisTimeoutMs: 2_000 }
  const a = fleetClient(t, upstream.url, { ...options, redis }, 'a')
  const b = fleetClient(t, upstream.url, { ...options, redis }, 'b')
  t.equal((await a.get('/')).statusCode, 200, 'the one token')
  const before = Number(/cmdstat_evalsha:calls=(\d+)/.exec(await redis.info('commandstats'))?.[1] ?? 0)
  const refused = await rejection(b.get('/'))
  t.type(refused, RateLimitedError)
  t.ok((refused as RateLimitedError).retryAfterMs > 100, 'the next token is half a second away')
  for (let i = 0; i < 5; i++) t.type(await rejection(b.get('/')), RateLimitedError)
  const after = Number(/cmdstat_evalsha:calls=(\d+)/.exec(await redis.info('commandstats'))?.[1] ?? 0)
  t.ok(after - before <= 2, `Redis asked once, not for every call (${after - before})`)
  t.equal(upstream.hits.length, 1)
})
