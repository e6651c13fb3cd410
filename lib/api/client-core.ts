import type { Attempt } from '../pipeline/attempt'
import type { Call, CallHost } from '../pipeline/call'
import type { Waiter } from '../pipeline/retry-wait'
import { CircuitBreaker } from '../policies/circuit-breaker'
import { type Clock, type RandomSource, systemClock } from '../clock'
import { ConcurrencyLimit } from '../policies/concurrency'
import { ClientClosedError } from '../errors'
import { ClientEvents } from '../telemetry/events'
import { LatencyTracker } from '../pipeline/hedging'
import type { Logger } from '../logger'
import type { ResolvedBreaker, ResolvedClientOptions } from '../options/resolve'
import { createUpstreams } from '../transport/upstream'
import { ReplicaSet } from '../policies/replicas'
import { RetryBudget } from '../policies/retry-budget'
import { LocalBucket, RateLimiter } from '../policies/rate-limit'
import { RedisTokens } from '../policies/rate-limit-redis'
import { Counters } from './stats'
import { TimerHeap } from '../pipeline/timer-heap'
import { TokenSource } from '../pipeline/auth'
import { sendablePath } from '../url'

/** Injected for tests: the clock and the random source behind waits, budget and breaker. */
export interface ClientInternals {
  clock?: Clock
  random?: RandomSource
}

/** How long close waits for the pools once nothing of ours runs on them any more. */
const POOL_CLOSE_MS = 1_000
const NOT_CHECKED = Symbol('no path checked yet')

/**
 * Everything a client's calls share: its settings, time, the breaker, the
 * budget, the limits, the replicas and their pools, the timers and the
 * counters. The public `HttpClient` holds one and shows none of it.
 */
export class ClientCore implements CallHost {
  readonly name: string
  readonly settings: ResolvedClientOptions
  readonly clock: Clock
  readonly random: RandomSource
  readonly timers: TimerHeap
  readonly maxResponseBytes: number | undefined
  readonly breaker: CircuitBreaker | null
  readonly breakerSettings: ResolvedBreaker | false
  readonly budget: RetryBudget | null
  readonly limit: ConcurrencyLimit
  readonly rateLimit: RateLimiter | null
  readonly replicas: ReplicaSet
  readonly basePath: string
  /** The `auth.token` function's tokens; `null` without one. */
  readonly tokens: TokenSource | null
  latency: LatencyTracker | null
  readonly events: ClientEvents
  readonly log: Logger
  /**
   * The logger a breaker transition goes to: set by a call for the moment it
   * acts on the breaker (so a transition it causes carries its request's
   * `reqId`), the client's otherwise.
   */
  breakerLog: Logger
  readonly counters = new Counters()
  readonly waiting = new Set<Waiter>()
  draining = false
  closed = false
  #liveHead: Attempt | null = null
  #live = 0
  #onIdle: (() => void) | null = null
  #closing: Promise<void> | null = null
  /** The grace period of the streams open when close began. */
  #streamGrace: NodeJS.Timeout | null = null
  // Refusals come in bulk for one path: checked once, not on every refused call.
  // Never a path a call can give: the first path is checked whatever it is (null included).
  #lastSendablePath: unknown = NOT_CHECKED

  constructor (settings: ResolvedClientOptions, logger: Logger, internals: ClientInternals, optionPath: string) {
    this.name = settings.name
    this.settings = settings
    this.clock = internals.clock ?? systemClock
    this.random = internals.random ?? Math.random
    this.timers = new TimerHeap(this.clock)
    this.maxResponseBytes = settings.maxResponseBytes
    this.log = logger
    this.breakerLog = logger
    this.events = new ClientEvents(logger)
    this.breakerSettings = settings.circuitBreaker
    this.breaker = settings.circuitBreaker === false
      ? null
      : new CircuitBreaker(settings.circuitBreaker, (from, to, remainingMs, cause) => {
        this.events.circuit({ client: this.name, from, to, remainingMs, cause }, this.breakerLog)
      }, this.random)
    const budget = settings.retry === false ? false : settings.retry.budget
    this.budget = budget === false ? null : new RetryBudget(budget.ratio, budget.minPerSecond)
    this.limit = new ConcurrencyLimit(settings.maxInFlight, settings.adaptiveConcurrency, (from, to) => {
      this.events.concurrencyLimit({ client: this.name, from, to }, this.clock.now())
    })
    this.rateLimit = this.#rateLimiter(settings)
    this.replicas = new ReplicaSet(createUpstreams(settings, optionPath), settings.outlierDetection, this.random, this.events, this.name)
    this.basePath = settings.basePath
    this.tokens = settings.auth !== false && settings.auth.kind === 'token' ? new TokenSource(settings.auth.token) : null
    this.latency = settings.hedge !== false && settings.hedge.delayMs === 'auto' ? new LatencyTracker() : null
  }

  #rateLimiter (settings: ResolvedClientOptions): RateLimiter | null {
    const options = settings.rateLimit
    if (options === false) return null
    const now = this.clock.now()
    const source = options.redis === undefined
      ? new LocalBucket(options.perSecond, options.burst, now)
      : new RedisTokens(options, this.clock, {
        paused: (pausedMs) => { this.events.rateLimitPaused({ client: this.name, pausedMs, reason: 'fleet' }) },
        unreachable: (error) => { this.events.redisUnreachable(this.name, options.onRedisError, error) },
        wake: () => { this.rateLimit?.wake() }
      })
    return new RateLimiter(source, options.maxWaitMs, this.clock)
  }

  /**
   * The path would be sent. Checked before admission, so that a refused
   * path gets its `InvalidRequestError` rather than a refusal; refusals come
   * in bulk for one path, so the last one that passed is remembered.
   */
  isSendable (path: string): boolean {
    if (path === this.#lastSendablePath) return true
    try {
      sendablePath(path)
    } catch {
      return false
    }
    this.#lastSendablePath = path
    return true
  }

  // Attempts not over yet, bodies included, in an intrusive list: close cuts them after its grace period.
  trackAttempt (attempt: Attempt): void {
    attempt.liveNext = this.#liveHead
    if (this.#liveHead !== null) this.#liveHead.livePrev = attempt
    this.#liveHead = attempt
    this.#live++
  }

  untrackAttempt (attempt: Attempt): void {
    const { livePrev: prev, liveNext: next } = attempt
    if (prev === null) this.#liveHead = next
    else prev.liveNext = next
    if (next !== null) next.livePrev = prev
    attempt.livePrev = null
    attempt.liveNext = null
    if (--this.#live === 0 && this.#onIdle !== null) this.#onIdle()
  }

  /**
   * From `fastify.close()` on: waits are cut, no retry or hedge is started,
   * and open streams have one `timeout` left. A stream a route relays keeps
   * its request, and so Fastify's close, waiting until `onClose`: its grace
   * period starts here.
   */
  drain (): void {
    this.#cutWaits()
    if (this.#streamGrace === null && this.#closing === null) this.#streamGrace = setTimeout(() => { this.#cutStreams() }, this.settings.timeout).unref()
  }

  #cutWaits (): void {
    this.draining = true
    for (const waiter of [...this.waiting]) waiter.cancelWait(new ClientClosedError(waiter))
  }

  #cutStreams (): void {
    this.#streamGrace = null
    this.#cutLive(true)
  }

  /** Cuts the calls whose attempts are still live (only streams, with `streamsOnly`), bodies still coming included. */
  #cutLive (streamsOnly: boolean): void {
    const calls = new Set<Call>()
    for (let attempt = this.#liveHead; attempt !== null; attempt = attempt.liveNext) {
      const call = attempt.owner as Call
      if (!streamsOnly || call.sink !== null) calls.add(call)
    }
    // Each cut attempt leaves the list: the calls are gathered first.
    for (const call of calls) call.destroy()
  }

  close (): Promise<void> {
    if (this.#closing === null) {
      this.#cutWaits()
      this.closed = true
      this.rateLimit?.close()
      this.#closing = this.#closeWhenIdle()
    }
    return this.#closing
  }

  async #closeWhenIdle (): Promise<void> {
    if (this.#live > 0) {
      // What is in flight may finish within one attempt timeout; then it is cut.
      let grace: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        this.#onIdle = resolve
        grace = setTimeout(resolve, this.settings.timeout).unref()
      })
      clearTimeout(grace)
      this.#onIdle = null
      this.#cutLive(false)
    }
    if (this.#streamGrace !== null) clearTimeout(this.#streamGrace)
    this.#streamGrace = null
    this.timers.stop()
    await Promise.all(this.replicas.upstreams.map(async (upstream) => {
      let timer: NodeJS.Timeout | undefined
      const closed = await Promise.race([
        upstream.close().then(() => true),
        new Promise<boolean>((resolve) => { timer = setTimeout(resolve, POOL_CLOSE_MS, false).unref() })
      ])
      clearTimeout(timer)
      if (!closed) await upstream.destroy(this.name)
    }))
  }
}
