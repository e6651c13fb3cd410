import type { AsyncResource } from 'node:async_hooks'
import type { CircuitBreaker, PermitValue } from '../policies/circuit-breaker'
import { Verdict } from '../policies/circuit-breaker'
import type { Clock } from '../clock'
import type { Counters } from '../api/stats'
import { type CallDetails, ClientClosedError, RateLimitedError, withoutStack } from '../errors'
import type { ClientEvents, RetrySkipReason } from '../telemetry/events'
import type { Logger } from '../logger'
import type { RateLimiter, TokenWaiter } from '../policies/rate-limit'
import type { RetryBudget } from '../policies/retry-budget'

/**
 * An attempt's wait for a token of the client's rate limit, when none is
 * there at once: in line if its turn comes in time, else no attempt (the
 * first refuses the call, a retry is a retry not made).
 */

/** What waiting for a token needs of the client. */
export interface TokenWaitHost {
  readonly clock: Clock
  readonly counters: Counters
  readonly events: ClientEvents
  readonly breaker: CircuitBreaker | null
  readonly budget: RetryBudget | null
  readonly rateLimit: RateLimiter | null
  /** `fastify.close()` has begun: nothing waits. */
  readonly draining: boolean
}

/** What waiting for a token needs of the call. */
export interface TokenWaiting extends TokenWaiter, CallDetails {
  readonly host: TokenWaitHost
  readonly clientName: string
  readonly method: string
  readonly path: string
  /** Attempts sent so far: none means the attempt waiting is the first. */
  readonly attempts: number
  readonly endsAt: number
  readonly scope: AsyncResource
  /** The breaker's permit of the attempt waiting for a token. */
  tokenPermit: PermitValue
  /** The call has waited in line once already (counted once in `stats()`). */
  waitedForToken: boolean
  /** When the budget granted the retry waiting: given back if it is not made. */
  readonly retryGrantedAt: number
  /** A stream's reconnect: its first attempt is a retry, not a new call. */
  readonly resumes: boolean
  /** The call waits: in `host.waiting`, so that close can cut it. */
  beginWait(): void
  /** The wait is over: out of `host.waiting`, running again. */
  endWait(): void
  /** Sends an attempt that counts toward `maxAttempts` (a first try or a retry). */
  sendAttempt(permit: PermitValue, now: number): void
  endWithLastFailure(skipped: RetrySkipReason | null): void
  fail(error: unknown): void
  log(): Logger
}

/** No token at once: wait in line if the turn comes in time, else no attempt. */
export function awaitToken (call: TokenWaiting, permit: PermitValue, now: number): void {
  const host = call.host
  call.tokenPermit = permit
  // From close on, nothing waits.
  const retryAfterMs = host.draining ? -1 : (host.rateLimit as RateLimiter).wait(call, now, call.endsAt)
  if (retryAfterMs === 0) {
    if (!call.waitedForToken) host.counters.rateLimitWaits++
    call.waitedForToken = true
    call.beginWait()
    return
  }
  noToken(call, retryAfterMs, now)
}

/** The call's turn came (run in the call's own context): its attempt goes out. */
export function tokenCame (call: TokenWaiting, now: number): void {
  call.endWait()
  if (call.attempts !== 0) call.host.counters.retries++
  else if (!call.resumes) call.host.budget?.recordCall(now)
  call.sendAttempt(call.tokenPermit, now)
}

/** The call's turn cannot come in time (run in the call's own context). */
export function noTokenCame (call: TokenWaiting, retryAfterMs: number): void {
  call.endWait()
  noToken(call, retryAfterMs, call.host.clock.now())
}

/** The call ends while in line (the caller, close): it leaves the line and gives back what it holds. */
export function leaveTokenLine (call: TokenWaiting): void {
  const host = call.host
  host.rateLimit?.cancel(call)
  giveBack(call, host.clock.now())
}

/** The attempt is not sent: the first refuses the call, a retry is a retry not made. Neither breaker nor budget counts it. */
function noToken (call: TokenWaiting, retryAfterMs: number, now: number): void {
  const host = call.host
  giveBack(call, now)
  if (retryAfterMs < 0) {
    call.fail(new ClientClosedError(call))
  } else if (call.attempts > 0) {
    call.endWithLastFailure('rate-limited')
  } else {
    host.counters.rateLimited++
    host.events.rateLimited({ client: call.clientName, method: call.method, path: call.path, retryAfterMs }, call.log())
    call.fail(withoutStack(RateLimitedError, call, retryAfterMs))
  }
}

/** What earlier stages lent the attempt not sent: a half-open probe slot, a retry's budget. */
function giveBack (call: TokenWaiting, now: number): void {
  call.host.breaker?.record(call.tokenPermit, Verdict.None, now)
  if (call.attempts > 0) call.host.budget?.refund(call.retryGrantedAt, now)
}
