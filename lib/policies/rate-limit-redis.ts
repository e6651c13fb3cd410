import { createHash } from 'node:crypto'
import type { Clock } from '../clock'
import type { ResolvedRateLimit } from '../options/rate-limit'
import type { RedisLike } from '../types'
import { LocalBucket, type TokenSource } from './rate-limit'

/**
 * A rate limit shared by a fleet: the bucket lives in Redis, taken from and
 * refilled by one atomic script, and each instance leases up to `lease`
 * tokens at once. A lease is a range of the bucket's tokens with the time
 * each one accrues (a token may be leased before it has accrued, and is
 * then spent only once it has), so the fleet stays within the bucket's own
 * bound; leases only save round trips. The app's Redis client is used as
 * given: never connected, never closed.
 */

// The bucket is one hash, so that a limit is one key (Redis Cluster keeps it on one node):
// t: tokens (negative when leased ahead of time), u: when t was counted, p: paused until (ms, Redis's clock).
const TAKE_SCRIPT = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key = KEYS[1]
local perMs = tonumber(ARGV[1]) / 1000
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local maxWait = tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', key, 't', 'u', 'p')
local paused = tonumber(state[3]) or 0
if paused > now then return {0, '0', paused - now} end
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
if now > updated then
  tokens = tokens + (now - updated) * perMs
  updated = now
end
tokens = math.min(burst, tokens + back)
local granted = math.min(want, math.floor(tokens + maxWait * perMs))
if granted < 0 then granted = 0 end
local level = tokens
tokens = tokens - granted
redis.call('HSET', key, 't', tostring(tokens), 'u', updated)
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / perMs) + 1000)
return {granted, tostring(level), 0}
`

// A pause empties the bucket: it refills from the pause's end.
const PAUSE_SCRIPT = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key = KEYS[1]
local pauseMs = tonumber(ARGV[1])
local perMs = tonumber(ARGV[2]) / 1000
local burst = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local untilAt = now + pauseMs
local paused = tonumber(redis.call('HGET', key, 'p')) or 0
if untilAt > paused then
  redis.call('HSET', key, 't', '0', 'u', untilAt, 'p', untilAt)
  redis.call('PEXPIRE', key, pauseMs + math.ceil(burst / perMs) + 1000)
  paused = untilAt
end
return paused - now
`

const TAKE_SHA = createHash('sha1').update(TAKE_SCRIPT).digest('hex')
const PAUSE_SHA = createHash('sha1').update(PAUSE_SCRIPT).digest('hex')

/**
 * Leased tokens are spent only this long after Redis was last asked: a pause
 * set by another instance is learnt (and nothing more is sent) within 100 ms.
 */
export const FRESH_MS = 90
/** After Redis failed to answer in time, it is asked again after this long. */
export const REDIS_RETRY_MS = 1_000

/** What the fleet's source tells its client. */
export interface FleetHooks {
  /** Another instance paused the limit (learnt through Redis). */
  paused(pausedMs: number): void
  /** Redis did not answer in time, or failed: the fallback applies for a while. */
  unreachable(error: unknown): void
  /** An answer from Redis changed what the waiting calls can have. */
  wake(): void
}

/** The tokens of a fleet, from Redis. */
export class RedisTokens implements TokenSource {
  readonly #redis: RedisLike
  readonly #options: ResolvedRateLimit
  readonly #perMs: number
  readonly #clock: Clock
  readonly #hooks: FleetHooks
  /** The limit of this instance while Redis is unreachable (`'local'`); `null` for `'refuse'`. */
  readonly #fallback: LocalBucket | null
  readonly #timers = new Set<unknown>()
  // The lease: `held` tokens left, the next being number `spent` of it; token i accrues
  // at grantedAt + max(0, i + 1 - level) / perMs.
  #held = 0
  #spent = 0
  #level = 0
  #grantedAt = 0
  /** When the last take was sent: leased tokens are fresh for FRESH_MS from then. */
  #askedAt = -Infinity
  #asking = false
  #pausedUntil = -Infinity
  #downUntil = -Infinity
  /** Redis had no token within `maxWaitMs` to lease: it is not asked again before this. */
  #nextAskAt = -Infinity

  constructor (options: ResolvedRateLimit, clock: Clock, hooks: FleetHooks) {
    this.#redis = options.redis as RedisLike
    this.#options = options
    this.#perMs = options.perSecond / 1000
    this.#clock = clock
    this.#hooks = hooks
    // The fallback keeps the bucket's size in seconds of the fallback's rate.
    const burst = Math.max(1, Math.round(options.burst * options.localPerSecond / options.perSecond))
    this.#fallback = options.onRedisError === 'local' ? new LocalBucket(options.localPerSecond, burst, clock.now()) : null
  }

  ready (now: number): boolean {
    if (now < this.#pausedUntil) return false
    if (now < this.#downUntil) return this.#fallback !== null && this.#fallback.ready(now)
    return this.#held > 0 && now - this.#askedAt < FRESH_MS && this.#tokenAt(this.#spent) <= now
  }

  take (now: number): void {
    if (now < this.#downUntil) {
      (this.#fallback as LocalBucket).take()
      return
    }
    this.#held--
    this.#spent++
  }

  turnAt (now: number, index: number): number {
    if (now < this.#downUntil && this.#fallback !== null) return this.#fallback.turnAt(now, index)
    const start = Math.max(now, this.#pausedUntil)
    const held = this.#held
    if (index < held) return Math.max(start, this.#tokenAt(this.#spent + index))
    // Past the lease, an estimate: Redis has the next token now, and then one every 1/perSecond.
    if (held === 0) {
      // Redis said when its next token comes: until then no lease is asked for.
      const next = now < this.#nextAskAt ? this.#tokenAt(0) : start
      return Math.max(start, next) + index / this.#perMs
    }
    return Math.max(start, this.#tokenAt(this.#spent + held - 1)) + (index - held + 1) / this.#perMs
  }

  wakeAt (now: number): number {
    if (now < this.#pausedUntil) return this.#pausedUntil
    // While Redis is down only 'local' keeps calls waiting: 'refuse' refused them.
    if (now < this.#downUntil) return (this.#fallback as LocalBucket).turnAt(now, 0)
    if (this.#asking) return Infinity
    if (this.#held === 0) return now < this.#nextAskAt ? this.#nextAskAt : Infinity
    return this.#tokenAt(this.#spent)
  }

  awaiting (): boolean {
    return this.#asking
  }

  refusing (now: number): number {
    return this.#fallback === null && now < this.#downUntil ? Math.max(1, Math.ceil(this.#downUntil - now)) : 0
  }

  /** The upstream asked this instance: the fleet is told. */
  pause (until: number, now: number): boolean {
    if (!this.#pauseHere(until)) return false
    if (now >= this.#downUntil) {
      this.#run(PAUSE_SHA, PAUSE_SCRIPT, [Math.ceil(until - now), this.#options.perSecond, this.#options.burst]).catch((error: unknown) => { this.#down(error) })
    }
    return true
  }

  fill (now: number): void {
    if (this.#asking || now < this.#pausedUntil || now < this.#downUntil || now < this.#nextAskAt) return
    const held = this.#held
    if (held > 0 && now - this.#askedAt < FRESH_MS) return
    // Tokens leased a while ago are kept, and their turn with them, once Redis says no pause was set since.
    const want = held > 0 ? 0 : this.#options.lease
    this.#asking = true
    this.#askedAt = now
    const options = this.#options
    this.#run(TAKE_SHA, TAKE_SCRIPT, [options.perSecond, options.burst, want, 0, options.maxWaitMs]).then((reply) => {
      this.#asking = false
      this.#granted(reply, want)
    }, (error: unknown) => {
      this.#asking = false
      this.#down(error)
    })
  }

  #pauseHere (until: number): boolean {
    if (until <= this.#pausedUntil) return false
    this.#pausedUntil = until
    // A leased token is not spent past a pause this instance knows of.
    this.#held = 0
    this.#fallback?.pause(until)
    return true
  }

  /** Answers that come after this are dropped: their timers are gone (see `#run`). */
  close (): void {
    for (const timer of this.#timers) this.#clock.clearTimer(timer)
    this.#timers.clear()
  }

  #granted (reply: unknown, wanted: number): void {
    const now = this.#clock.now()
    const [granted, level, pausedMs] = reply as [number, string, number]
    if (pausedMs > 0) {
      if (this.#pauseHere(now + pausedMs)) this.#hooks.paused(pausedMs)
    } else if (wanted > 0) {
      this.#held = granted
      this.#spent = 0
      this.#level = Number(level)
      this.#grantedAt = now
      if (granted === 0) this.#nextAskAt = this.#tokenAt(0) - this.#options.maxWaitMs
    }
    this.#hooks.wake()
  }

  #down (error: unknown): void {
    this.#downUntil = this.#clock.now() + REDIS_RETRY_MS
    this.#held = 0
    this.#hooks.unreachable(error)
    this.#hooks.wake()
  }

  #tokenAt (index: number): number {
    const missing = index + 1 - this.#level
    return missing <= 0 ? this.#grantedAt : this.#grantedAt + missing / this.#perMs
  }

  /** One script by its hash (loaded on first use), bounded by `redisTimeoutMs`. */
  #run (sha: string, script: string, args: Array<string | number>): Promise<unknown> {
    const redis = this.#redis
    const key = this.#options.key
    return new Promise((resolve, reject) => {
      const timer = this.#clock.setTimer(() => {
        this.#timers.delete(timer)
        reject(new Error(`Redis did not answer within ${this.#options.redisTimeoutMs} ms`))
      }, this.#options.redisTimeoutMs)
      this.#timers.add(timer)
      const settle = (fn: () => void): void => {
        if (!this.#timers.delete(timer)) return
        this.#clock.clearTimer(timer)
        fn()
      }
      redis.evalsha(sha, 1, key, ...args)
        .catch((error: unknown) => {
          if (!String((error as Error)?.message).startsWith('NOSCRIPT')) throw error
          return redis.eval(script, 1, key, ...args)
        })
        .then((reply) => settle(() => resolve(reply)), (error: unknown) => settle(() => reject(error)))
    })
  }
}
