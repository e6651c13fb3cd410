import { backoffDelay, retryAfterDelay } from './backoff'
import type { CircuitBreaker } from '../policies/circuit-breaker'
import type { RandomSource } from '../clock'
import type { RetrySkipReason } from '../telemetry/events'
import type { ResolvedRetry } from '../options/resolve'
import { neverReachedUpstream } from './outcome'
import type { RetryBudget } from '../policies/retry-budget'

/** Methods that may be repeated without changing the outcome (RFC 9110, 9.2.2). */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

/** A transient failure, and what the decision needs to know of its call. */
export interface RetryQuestion {
  readonly retry: ResolvedRetry
  readonly method: string
  readonly hasIdempotencyKey: boolean
  readonly replayable: boolean
  /** Attempts made so far that count toward `maxAttempts` (hedges do not). */
  readonly attempts: number
  /** The failed response's status, 0 for a transport failure or timeout. */
  readonly statusCode: number
  readonly retryAfter: string | string[] | undefined
  readonly error: unknown
  /** When the call must be over: its total timeout or the inbound deadline, whichever comes first. */
  readonly endsAt: number
  /** The circuit was opened by this very failure's `Retry-After`: its retry is the probe. */
  readonly openedByThisAnswer: boolean
}

export interface RetryResources {
  readonly breaker: CircuitBreaker | null
  readonly budget: RetryBudget | null
  readonly random: RandomSource
}

/**
 * Whether a transient failure may be retried given its method: idempotent
 * methods always; POST, PATCH and the rest only when the request never
 * reached the upstream, on a 429 (refused unprocessed), with an
 * `Idempotency-Key`, or when `retryNonIdempotent` is set.
 */
export function methodAllowsRetry (question: RetryQuestion): boolean {
  if (IDEMPOTENT_METHODS.has(question.method) || question.hasIdempotencyKey || question.retry.retryNonIdempotent) return true
  if (question.statusCode !== 0) return question.statusCode === 429
  return neverReachedUpstream(question.error)
}

/** The wait `Retry-After` asks for on a 429 or 503, when the call trusts it; `undefined` otherwise. */
export function askedWait (retry: ResolvedRetry | false, statusCode: number, header: string | string[] | undefined, wallNow: number): number | undefined {
  if ((retry !== false && !retry.respectRetryAfter) || (statusCode !== 429 && statusCode !== 503)) return undefined
  return retryAfterDelay(header, wallNow)
}

/**
 * The wait before the next attempt, or the reason there is none, in the
 * SPEC's order: attempts used up, method, a stream body, the wait itself
 * (Retry-After or backoff) against the deadline, the circuit, and last the
 * budget, which a granted retry consumes.
 */
export function nextRetry (question: RetryQuestion, resources: RetryResources, now: number, wallNow: number): number | RetrySkipReason {
  const retry = question.retry
  if (question.attempts >= retry.maxAttempts) return 'attempts'
  if (!methodAllowsRetry(question)) return 'method'
  if (!question.replayable) return 'stream-body'
  const wait = askedWait(retry, question.statusCode, question.retryAfter, wallNow) ?? backoffDelay(question.attempts, retry, resources.random)
  if (now + wait >= question.endsAt) return 'deadline'
  if (resources.breaker !== null && !question.openedByThisAnswer && resources.breaker.state(now) === 'open') return 'circuit'
  if (resources.budget !== null && !resources.budget.tryAcquire(now)) return 'budget'
  return wait
}
