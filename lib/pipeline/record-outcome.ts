import type { Attempt } from './attempt'
import { Cut } from './attempt-state'
import { type CircuitBreaker, Verdict } from '../policies/circuit-breaker'
import type { Clock } from '../clock'
import type { ConcurrencyLimit } from '../policies/concurrency'
import type { ClientEvents } from '../telemetry/events'
import type { LatencyTracker } from './hedging'
import type { Logger } from '../logger'
import type { Outcome } from './outcome'
import type { PreparedRequest } from './prepare'
import { askedPause } from './rate-limit-headers'
import type { RateLimiter } from '../policies/rate-limit'
import type { ReplicaSet } from '../policies/replicas'

/**
 * The one place an attempt's outcome reaches the policies: the breaker,
 * the replica set, the rate limit, the adaptive limit and the latency
 * tracker, once per attempt. On every call's path: it reads the clock only
 * when something needs the time.
 */

/** What recording an outcome needs of the client. */
export interface RecordHost {
  readonly clock: Clock
  readonly breaker: CircuitBreaker | null
  readonly replicas: ReplicaSet
  readonly rateLimit: RateLimiter | null
  readonly limit: ConcurrencyLimit
  /** Not read-only only because hedging makes it on first use. */
  latency: LatencyTracker | null
  readonly events: ClientEvents
  breakerLog: Logger
  readonly log: Logger
}

/** What recording an outcome needs of the call. */
export interface Recorded {
  readonly host: RecordHost
  readonly request: PreparedRequest
  readonly clientName: string
  log(): Logger
}

/** Records `attempt`'s outcome with the policies; a breaker transition this causes goes through the call's logger. */
export function recordOutcome (call: Recorded, attempt: Attempt, outcome: Outcome): void {
  const host = call.host
  const verdict = outcome.verdict
  const breaker = host.breaker
  // A plain success needs no clock read: the breaker and the replica set only time failures,
  // unless a ratio rule buckets successes too (then the time of the headers, when read, serves).
  let now = 0
  if (verdict !== Verdict.Success || outcome.opensCircuitMs !== 0) now = host.clock.now()
  else if (breaker !== null && breaker.clocked) now = attempt.headersAt === 0 ? host.clock.now() : attempt.headersAt
  if (attempt.cut === Cut.Loser && attempt.headers === null && !attempt.isHedge) host.latency?.record(now - attempt.startedAt)
  if (breaker !== null) {
    host.breakerLog = call.log()
    // Time to headers, or to the failure that came instead: read by the slow-call rule only.
    breaker.record(attempt.permit, verdict, now, (attempt.headersAt === 0 ? now : attempt.headersAt) - attempt.startedAt)
    if (outcome.opensCircuitMs > 0) breaker.openFor(outcome.opensCircuitMs, now)
    host.breakerLog = host.log
  }
  host.replicas.record(attempt.upstream, verdict, now)
  if (host.rateLimit !== null && attempt.headers !== null) hearRateLimit(call, host.rateLimit, attempt, outcome)
  if (verdict !== Verdict.None && host.limit.adaptive) host.limit.onAttempt(outcome.dropped)
}

/**
 * The upstream's word on its rate limit pauses the client's, unless the
 * call chose not to trust it. A 429's `Retry-After` is the one its outcome read.
 */
function hearRateLimit (call: Recorded, limiter: RateLimiter, attempt: Attempt, outcome: Outcome): void {
  const retry = call.request.retry
  if (retry !== false && !retry.respectRetryAfter) return
  const clock = call.host.clock
  const asked = askedPause(attempt.statusCode === 429 ? outcome.askedWaitMs : undefined, attempt.headers as NonNullable<Attempt['headers']>, clock.wallNow === undefined ? clock.now() : clock.wallNow())
  if (asked === null || !limiter.pause(asked.ms, clock.now())) return
  call.host.events.rateLimitPaused({ client: call.clientName, pausedMs: Math.round(asked.ms), reason: asked.reason }, call.log())
}
