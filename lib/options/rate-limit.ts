import type { RedisLike } from '../types'
import { checkDuration, checkInteger, checkKeys, checkNumber, checkObject, describe, type Fail } from '../validate'

/** `rateLimit` once validated, every default filled in. */
export interface ResolvedRateLimit {
  readonly perSecond: number
  readonly burst: number
  readonly maxWaitMs: number
  /** `undefined`: this instance's own limit, in memory. */
  readonly redis: RedisLike | undefined
  readonly key: string
  readonly lease: number
  readonly redisTimeoutMs: number
  readonly onRedisError: 'local' | 'refuse'
  readonly localPerSecond: number
}

const RATE_LIMIT_KEYS = ['perSecond', 'burst', 'maxWaitMs', 'redis', 'key', 'lease', 'redisTimeoutMs', 'onRedisError', 'localPerSecond']
/** The options that only a limit shared through Redis reads. */
const REDIS_ONLY_KEYS = ['key', 'lease', 'redisTimeoutMs', 'onRedisError', 'localPerSecond']

function join (path: string, key: string): string {
  return `${path}.${key}`
}

const DEFAULT_MAX_WAIT_MS = 1_000
const DEFAULT_REDIS_TIMEOUT_MS = 100

/** Validates `rateLimit` and fills in its defaults; `false` when it is not set. */
export function resolveRateLimit (value: unknown, name: string, path: string, fail: Fail): ResolvedRateLimit | false {
  if (value === undefined || value === false) return false
  const given = checkObject(value, path, fail)
  checkKeys(given, RATE_LIMIT_KEYS, path, fail)
  if (given.perSecond === undefined) fail(join(path, 'perSecond'), 'is required: the attempts per second this client may send')
  const perSecond = checkPositive(given.perSecond, join(path, 'perSecond'), fail)
  const burst = given.burst === undefined ? Math.max(1, perSecond) : checkNumber(given.burst, join(path, 'burst'), fail, 1)
  const maxWaitMs = given.maxWaitMs === undefined ? DEFAULT_MAX_WAIT_MS : checkDuration(given.maxWaitMs, join(path, 'maxWaitMs'), fail, { allowZero: true })
  const redis = given.redis
  if (redis === undefined) {
    for (const key of REDIS_ONLY_KEYS) {
      if (given[key] !== undefined) fail(join(path, key), 'applies only to a limit shared through Redis: give rateLimit.redis too')
    }
  } else if (!isRedisLike(redis)) {
    fail(join(path, 'redis'), `must be an ioredis client (with eval() and evalsha() methods), got ${describe(redis)}`)
  }
  let key = `frh:rate:${name}`
  if (given.key !== undefined) {
    if (typeof given.key !== 'string' || given.key === '') fail(join(path, 'key'), `must be a non-empty string, got ${describe(given.key)}`)
    key = given.key
  }
  const lease = given.lease === undefined
    ? Math.max(1, Math.min(Math.floor(burst), Math.floor(perSecond / 50)))
    : checkInteger(given.lease, join(path, 'lease'), fail, 1, Math.floor(burst))
  const redisTimeoutMs = given.redisTimeoutMs === undefined ? DEFAULT_REDIS_TIMEOUT_MS : checkDuration(given.redisTimeoutMs, join(path, 'redisTimeoutMs'), fail)
  let onRedisError: 'local' | 'refuse' = 'local'
  if (given.onRedisError !== undefined) {
    if (given.onRedisError !== 'local' && given.onRedisError !== 'refuse') fail(join(path, 'onRedisError'), `must be 'local' or 'refuse', got ${describe(given.onRedisError)}`)
    onRedisError = given.onRedisError
  }
  const localPerSecond = given.localPerSecond === undefined ? perSecond : checkPositive(given.localPerSecond, join(path, 'localPerSecond'), fail)
  return Object.freeze({ perSecond, burst, maxWaitMs, redis: redis as RedisLike | undefined, key, lease, redisTimeoutMs, onRedisError, localPerSecond })
}

function checkPositive (value: unknown, path: string, fail: Fail): number {
  const number = checkNumber(value, path, fail, 0)
  if (number === 0) fail(path, 'must be greater than 0, got 0')
  return number
}

function isRedisLike (value: unknown): value is RedisLike {
  return typeof value === 'object' && value !== null && typeof (value as RedisLike).eval === 'function' && typeof (value as RedisLike).evalsha === 'function'
}
