import { backoffDelay } from './backoff'
import type { CircuitBreaker } from '../policies/circuit-breaker'
import type { RandomSource } from '../clock'
import type { RetrySkipReason } from '../telemetry/events'
import type { ResolvedRetry } from '../options/resolve'
import type { Outcome } from './outcome'
import type { RetryBudget } from '../policies/retry-budget'

/** Methods that may be repeated without changing the outcome (RFC 9110, 9.2.2). */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

/** What the decision needs to know of the call whose attempt failed. */
export interface RetryQuestion {
  readonly retry: ResolvedRetry
  readonly method: string
  readonly hasIdempotencyKey: boolean
  readonly replayable: boolean
  /** Attempts made so far that count toward `maxAttempts` (hedges do not). */
  readonly attempts: number
  /** When the call must be over: its total timeout or the inbound deadline, whichever comes first. */
  readonly endsAt: number
}

export interface RetryResources {
  readonly breaker: CircuitBreaker | null
  readonly budget: RetryBudget | null
  readonly random: RandomSource
}

/**
 * Whether a transient failure may be retried given its method: idempotent
 * methods always; POST, PATCH and the rest only when the request provably
 * was not processed (it never reached the upstream, or a 429), with an
 * `Idempotency-Key`, or when `retryNonIdempotent` is set.
 */
export function methodAllowsRetry (question: RetryQuestion, failure: Outcome): boolean {
  return IDEMPOTENT_METHODS.has(question.method) || question.hasIdempotencyKey || question.retry.retryNonIdempotent || failure.unprocessed
}

/**
 * The wait before the next attempt after `failure` (a transient one), or
 * the reason there is none, in the SPEC's order: attempts used up, method, a
 * stream body, the wait itself (Retry-After or backoff) against the
 * deadline, the circuit (unless this very answer opened it: its retry is the
 * probe), and last the budget, which a granted retry consumes.
 */
export function nextRetry (question: RetryQuestion, failure: Outcome, resources: RetryResources, now: number): number | RetrySkipReason {
  const retry = question.retry
  if (question.attempts >= retry.maxAttempts) return 'attempts'
  if (!methodAllowsRetry(question, failure)) return 'method'
  if (!question.replayable) return 'stream-body'
  const wait = failure.askedWaitMs ?? backoffDelay(question.attempts, retry, resources.random)
  if (now + wait >= question.endsAt) return 'deadline'
  if (resources.breaker !== null && failure.opensCircuitMs === 0 && resources.breaker.state(now) === 'open') return 'circuit'
  if (resources.budget !== null && !resources.budget.tryAcquire(now)) return 'budget'
  return wait
}
