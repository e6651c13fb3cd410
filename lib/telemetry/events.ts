import diagnosticsChannel from 'node:diagnostics_channel'
import type { CircuitCause, CircuitState } from '../policies/circuit-breaker'
import type { Logger } from '../logger'
import type { PauseReason } from '../policies/rate-limit'

export type { CircuitCause } from '../policies/circuit-breaker'

/** Why a retry was not made. */
export type RetrySkipReason = 'method' | 'budget' | 'deadline' | 'circuit' | 'attempts' | 'stream-body' | 'closing' | 'rate-limited'

interface CallEvent {
  client: string
  method: string
  path: string
}

export interface RetryEvent extends CallEvent {
  /** The attempt that failed (1 for the first). */
  attempt: number
  /** What failed: `status 503`, `ECONNRESET`, `timeout`, ... */
  reason: string
  /** How long the client waits before the next attempt, in ms. */
  waitMs: number
}

export interface RetrySkippedEvent extends CallEvent {
  attempt: number
  reason: string
  /** Why no retry was made. */
  skipped: RetrySkipReason
}

export interface HedgeEvent extends CallEvent {
  /** The hedge's attempt number (2 for the first hedge of a call). */
  attempt: number
  /** How long the call had waited for response headers. */
  delayMs: number
}

export interface CircuitEvent {
  client: string
  from: CircuitState
  to: CircuitState
  /** When the circuit opens: ms until it half-opens; 0 otherwise. */
  remainingMs: number
  /**
   * What moved the circuit: the rule that opened it (`failures`,
   * `failure-ratio`, `slow-calls`, `retry-after`), `probe` (a probe's
   * verdict closed it or opened it again) or `recovery` (it half-opened).
   */
  cause: CircuitCause
}

/** The end of the log line of a circuit that opens, by cause. */
const OPENED_BECAUSE: Readonly<Record<CircuitCause, string>> = {
  failures: ' after consecutive failures',
  'failure-ratio': ': the failure ratio over the window was reached',
  'slow-calls': ': the slow-call ratio over the window was reached',
  'retry-after': ', as the upstream asked (Retry-After)',
  probe: ': a probe failed',
  recovery: ''
}

export interface ShortCircuitedEvent extends CallEvent {
  remainingMs: number
}

export interface OverloadedEvent extends CallEvent {
  limit: number
}

export interface DeadlineExceededEvent extends CallEvent {
  attempts: number
}

export interface ConcurrencyLimitEvent {
  client: string
  from: number
  to: number
}

export interface StreamResumedEvent extends CallEvent {
  /** The reconnect's number since the stream last yielded an event (1 for the first). */
  attempt: number
  /** Sent as `Last-Event-ID`. */
  lastEventId: string
  /** How long the stream waited before reconnecting, in ms. */
  waitMs: number
}

export interface StreamIdleTimeoutEvent extends CallEvent {
  idleTimeoutMs: number
}

export interface RateLimitedEvent extends CallEvent {
  /** Ms until a token is expected. */
  retryAfterMs: number
}

export interface RateLimitPausedEvent {
  client: string
  /** How long the limit sends nothing, in ms; then it starts empty. */
  pausedMs: number
  /** Which header of the upstream's answer asked for it, or `'fleet'`: another instance learnt it (through Redis). */
  reason: PauseReason
}

export interface ReplicaEvent {
  client: string
  origin: string
  /** `true` when ejected, `false` when it serves again. */
  ejected: boolean
  /** How long it is out, when ejected. */
  ejectionMs: number
  /** Times it was ejected so far. */
  ejections: number
}

/**
 * The `diagnostics_channel` names the client publishes on; subscribe with
 * `diagnostics_channel.subscribe(name, listener)` for metrics and tracing.
 * The OpenTelemetry counter is built on these.
 */
export const CHANNELS = Object.freeze({
  retry: 'fastify-resilient-http:retry',
  retrySkipped: 'fastify-resilient-http:retry-skipped',
  hedge: 'fastify-resilient-http:hedge',
  circuit: 'fastify-resilient-http:circuit',
  shortCircuited: 'fastify-resilient-http:short-circuited',
  overloaded: 'fastify-resilient-http:overloaded',
  deadlineExceeded: 'fastify-resilient-http:deadline-exceeded',
  concurrencyLimit: 'fastify-resilient-http:concurrency-limit',
  replica: 'fastify-resilient-http:replica',
  streamResumed: 'fastify-resilient-http:stream-resumed',
  streamIdleTimeout: 'fastify-resilient-http:stream-idle-timeout',
  rateLimited: 'fastify-resilient-http:rate-limited',
  rateLimitPaused: 'fastify-resilient-http:rate-limit-paused'
})

const channels = {
  retry: diagnosticsChannel.channel(CHANNELS.retry),
  retrySkipped: diagnosticsChannel.channel(CHANNELS.retrySkipped),
  hedge: diagnosticsChannel.channel(CHANNELS.hedge),
  circuit: diagnosticsChannel.channel(CHANNELS.circuit),
  shortCircuited: diagnosticsChannel.channel(CHANNELS.shortCircuited),
  overloaded: diagnosticsChannel.channel(CHANNELS.overloaded),
  deadlineExceeded: diagnosticsChannel.channel(CHANNELS.deadlineExceeded),
  concurrencyLimit: diagnosticsChannel.channel(CHANNELS.concurrencyLimit),
  replica: diagnosticsChannel.channel(CHANNELS.replica),
  streamResumed: diagnosticsChannel.channel(CHANNELS.streamResumed),
  streamIdleTimeout: diagnosticsChannel.channel(CHANNELS.streamIdleTimeout),
  rateLimited: diagnosticsChannel.channel(CHANNELS.rateLimited),
  rateLimitPaused: diagnosticsChannel.channel(CHANNELS.rateLimitPaused)
}

/**
 * The attempt being handed to undici right now (1-based), 0 otherwise. undici
 * publishes `undici:request:create` synchronously inside `dispatch()`, so an
 * instrumentation hook running there can tell a retry or hedge from a first try.
 */
export const dispatching = { attempt: 0 }

/** Limit changes are published each time but logged at most this often. */
const LIMIT_LOG_INTERVAL_MS = 1_000

/**
 * Reports a client's decisions to a logger and the diagnostics channels.
 * Each log line carries the client's name once, as `client`; a decision made
 * for a call goes through the logger of the request that made the call.
 */
export class ClientEvents {
  readonly #log: Logger
  #limitLoggedAt = -Infinity

  constructor (log: Logger) {
    this.#log = log
  }

  retry (event: RetryEvent, log = this.#log): void {
    log.info(event, `retrying ${event.method} ${event.path} in ${event.waitMs} ms after ${event.reason} (attempt ${event.attempt})`)
    if (channels.retry.hasSubscribers) channels.retry.publish(event)
  }

  retrySkipped (event: RetrySkippedEvent, log = this.#log): void {
    log.info(event, `not retrying ${event.method} ${event.path} after ${event.reason}: ${event.skipped}`)
    if (channels.retrySkipped.hasSubscribers) channels.retrySkipped.publish(event)
  }

  hedge (event: HedgeEvent, log = this.#log): void {
    log.info(event, `hedging ${event.method} ${event.path} after ${event.delayMs} ms without an answer (attempt ${event.attempt})`)
    if (channels.hedge.hasSubscribers) channels.hedge.publish(event)
  }

  circuit (event: CircuitEvent, log = this.#log): void {
    if (event.to === 'open') {
      log.warn(event, `circuit open for ${event.remainingMs} ms${OPENED_BECAUSE[event.cause]}`)
    } else {
      log.info(event, `circuit ${event.to}`)
    }
    if (channels.circuit.hasSubscribers) channels.circuit.publish(event)
  }

  /** Refusals come in bulk while the circuit is open: published (the event made only for a subscriber), not logged. */
  shortCircuited (client: string, method: string, path: string, remainingMs: number): void {
    if (channels.shortCircuited.hasSubscribers) channels.shortCircuited.publish({ client, method, path, remainingMs } satisfies ShortCircuitedEvent)
  }

  /** Refusals come in bulk under overload: published (the event made only for a subscriber), not logged. */
  overloaded (client: string, method: string, path: string, limit: number): void {
    if (channels.overloaded.hasSubscribers) channels.overloaded.publish({ client, method, path, limit } satisfies OverloadedEvent)
  }

  deadlineExceeded (event: DeadlineExceededEvent, log = this.#log): void {
    log.info(event, `${event.method} ${event.path}: the inbound request's deadline passed (after ${event.attempts} attempt(s))`)
    if (channels.deadlineExceeded.hasSubscribers) channels.deadlineExceeded.publish(event)
  }

  concurrencyLimit (event: ConcurrencyLimitEvent, now: number): void {
    if (now - this.#limitLoggedAt >= LIMIT_LOG_INTERVAL_MS) {
      this.#limitLoggedAt = now
      this.#log.info(event, `concurrency limit ${event.to} (was ${event.from})`)
    }
    if (channels.concurrencyLimit.hasSubscribers) channels.concurrencyLimit.publish(event)
  }

  streamResumed (event: StreamResumedEvent, log = this.#log): void {
    log.info(event, `resuming ${event.method} ${event.path} after event ${event.lastEventId} in ${event.waitMs} ms (reconnect ${event.attempt})`)
    if (channels.streamResumed.hasSubscribers) channels.streamResumed.publish(event)
  }

  streamIdleTimeout (event: StreamIdleTimeoutEvent, log = this.#log): void {
    log.info(event, `${event.method} ${event.path}: the stream sent nothing for ${event.idleTimeoutMs} ms`)
    if (channels.streamIdleTimeout.hasSubscribers) channels.streamIdleTimeout.publish(event)
  }

  replica (event: ReplicaEvent): void {
    if (event.ejected) {
      this.#log.warn(event, `replica ${event.origin} ejected for ${event.ejectionMs} ms`)
    } else {
      this.#log.info(event, `replica ${event.origin} serves again`)
    }
    if (channels.replica.hasSubscribers) channels.replica.publish(event)
  }

  rateLimited (event: RateLimitedEvent, log = this.#log): void {
    log.info(event, `${event.method} ${event.path} refused by the rate limit: next token in ${event.retryAfterMs} ms`)
    if (channels.rateLimited.hasSubscribers) channels.rateLimited.publish(event)
  }

  rateLimitPaused (event: RateLimitPausedEvent, log = this.#log): void {
    const source = event.reason === 'fleet' ? 'as another instance learnt' : `as the upstream asked (${event.reason})`
    log.warn(event, `rate limit paused for ${event.pausedMs} ms, ${source}`)
    if (channels.rateLimitPaused.hasSubscribers) channels.rateLimitPaused.publish(event)
  }

  /** Redis failed a fleet's rate limit: logged (at most once a second, as the limit asks again then), not published. */
  redisUnreachable (client: string, fallback: 'local' | 'refuse', error: unknown): void {
    const then = fallback === 'local' ? 'this instance keeps its own limit' : 'calls are refused'
    this.#log.warn({ client, err: error }, `rate limit: Redis unreachable (${error instanceof Error ? error.message : String(error)}); ${then} for now`)
  }
}
