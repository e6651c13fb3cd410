import { test } from 'tap'
import { InvalidOptionsError } from '../lib/errors'
import { resolvePluginOptions } from '../lib/options/resolve'

const BASE = 'http://127.0.0.1:9'
const redis = { eval: async () => null, evalsha: async () => null }

function resolveLimit (rateLimit: unknown, defaults?: unknown): unknown {
  return resolvePluginOptions({ clients: { payments: { baseUrl: BASE, rateLimit } }, defaults }).clients[0].rateLimit
}

test('rateLimit defaults: burst is perSecond, a wait of 1 s, a lease of perSecond / 50, the fleet\'s key by client name', async (t) => {
  t.equal(resolveLimit(undefined), false)
  t.equal(resolveLimit(false), false)
  t.same(resolveLimit({ perSecond: 100 }), {
    perSecond: 100, burst: 100, maxWaitMs: 1_000, redis: undefined, key: 'frh:rate:payments', lease: 2, redisTimeoutMs: 100, onRedisError: 'local', localPerSecond: 100
  })
  t.match(resolveLimit({ perSecond: 0.5 }), { burst: 1, lease: 1 }, 'a slow rate still has room for one attempt')
  t.match(resolveLimit({ perSecond: 10_000, burst: 20, redis }), { lease: 20 }, 'a lease never exceeds the bucket')
  t.match(resolveLimit({ perSecond: 500, redis, key: 'k', lease: 5, redisTimeoutMs: 50, onRedisError: 'refuse', localPerSecond: 100, maxWaitMs: 0 }), {
    key: 'k', lease: 5, redisTimeoutMs: 50, onRedisError: 'refuse', localPerSecond: 100, maxWaitMs: 0
  })
  t.equal((resolveLimit({ perSecond: 5, redis }) as { redis: unknown }).redis, redis, 'the app\'s client, as given')
  t.match(resolveLimit({ perSecond: 7 }, { rateLimit: { maxWaitMs: 200 } }), { perSecond: 7, maxWaitMs: 200 }, 'defaults merge under a client\'s own')
})

test('rateLimit mistakes name their dotted path', async (t) => {
  const cases: Array<[string, unknown, string]> = [
    ['not an object', true, 'rateLimit'],
    ['unknown key', { perSecond: 1, rate: 2 }, 'rateLimit.rate'],
    ['perSecond missing', {}, 'rateLimit.perSecond'],
    ['perSecond 0', { perSecond: 0 }, 'rateLimit.perSecond'],
    ['perSecond negative', { perSecond: -1 }, 'rateLimit.perSecond'],
    ['perSecond a string', { perSecond: '10' }, 'rateLimit.perSecond'],
    ['perSecond Infinity', { perSecond: Infinity }, 'rateLimit.perSecond'],
    ['burst below 1', { perSecond: 1, burst: 0.5 }, 'rateLimit.burst'],
    ['maxWaitMs negative', { perSecond: 1, maxWaitMs: -1 }, 'rateLimit.maxWaitMs'],
    ['redis without eval', { perSecond: 1, redis: { evalsha: () => null } }, 'rateLimit.redis'],
    ['redis a URL', { perSecond: 1, redis: 'redis://localhost' }, 'rateLimit.redis'],
    ['key without redis', { perSecond: 1, key: 'k' }, 'rateLimit.key'],
    ['lease without redis', { perSecond: 1, lease: 2 }, 'rateLimit.lease'],
    ['onRedisError without redis', { perSecond: 1, onRedisError: 'local' }, 'rateLimit.onRedisError'],
    ['key empty', { perSecond: 1, redis, key: '' }, 'rateLimit.key'],
    ['lease 0', { perSecond: 1, redis, lease: 0 }, 'rateLimit.lease'],
    ['lease above burst', { perSecond: 100, burst: 10, redis, lease: 11 }, 'rateLimit.lease'],
    ['redisTimeoutMs 0', { perSecond: 1, redis, redisTimeoutMs: 0 }, 'rateLimit.redisTimeoutMs'],
    ['onRedisError unknown', { perSecond: 1, redis, onRedisError: 'fail' }, 'rateLimit.onRedisError'],
    ['localPerSecond 0', { perSecond: 1, redis, localPerSecond: 0 }, 'rateLimit.localPerSecond']
  ]
  for (const [description, rateLimit, option] of cases) {
    const error = t.throws(() => resolveLimit(rateLimit), description) as InvalidOptionsError
    t.type(error, InvalidOptionsError, description)
    t.equal(error.option, `clients.payments.${option}`, description)
  }
  const error = t.throws(() => resolveLimit(undefined, { rateLimit: { maxWaitMs: -5 } })) as InvalidOptionsError
  t.equal(error.option, 'defaults.rateLimit.maxWaitMs', 'a bad default is the default\'s mistake')
})
