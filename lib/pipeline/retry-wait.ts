import type { Attempt } from './attempt'
import { Permit, type PermitValue } from '../policies/circuit-breaker'
import type { CallDetails } from '../errors'
import { describeFailure, type Outcome } from './outcome'
import type { Logger } from '../logger'
import type { PreparedRequest } from './prepare'
import { nextRetry, type RetryResources } from './retry'
import { awaitToken, type TokenWaitHost, type TokenWaiting } from './rate-limit-wait'
import type { TimedEntry, TimerHeap } from './timer-heap'

/**
 * The wait between a transient failure and the next attempt: whether there
 * is one (retry.ts decides, unless the client is closing), its timer, and
 * what happens when it is over (the breaker's permit, a rate-limit token,
 * the retry).
 */

/** Something waiting to send again, that close cuts. */
export interface Waiter extends CallDetails {
  cancelWait(error: unknown): void
}

/** What waiting to retry needs of the client. */
export interface RetryWaitHost extends TokenWaitHost, RetryResources {
  readonly timers: TimerHeap
  readonly closed: boolean
  breakerLog: Logger
  readonly log: Logger
}

/** What waiting to retry needs of the call: the call is also its hedge-timer entry, stopped while it waits. */
export interface Retrying extends TokenWaiting, TimedEntry {
  readonly host: RetryWaitHost
  readonly request: PreparedRequest
  /** Attempts that count toward `maxAttempts`. */
  readonly tries: number
  retryGrantedAt: number
  /** When the retry waited for is due. */
  retryAt: number
  /** The timer of the wait; `null` when the call does not wait to retry. */
  waitTimer: unknown
}

/**
 * After a transient failure with no other attempt out: waits to retry, or
 * ends the call with that failure (saying why no retry comes, when it is
 * not the call's own choice).
 */
export function retryOrEnd (call: Retrying, attempt: Attempt, outcome: Outcome): void {
  const host = call.host
  const request = call.request
  const retry = request.retry
  if (retry === false || retry.maxAttempts === 1 || host.closed || request.signal?.aborted === true) {
    call.endWithLastFailure(null)
    return
  }
  if (host.draining) {
    call.endWithLastFailure('closing')
    return
  }
  const now = host.clock.now()
  host.breakerLog = call.log()
  const decision = nextRetry({
    retry,
    method: request.method,
    hasIdempotencyKey: request.hasIdempotencyKey,
    replayable: request.replayable,
    attempts: call.tries,
    endsAt: call.endsAt
  }, outcome, host, now)
  host.breakerLog = host.log
  call.retryGrantedAt = now
  if (typeof decision !== 'number') {
    if (decision === 'budget') host.counters.retriesDenied++
    call.endWithLastFailure(decision)
    return
  }
  host.events.retry({ client: call.clientName, method: call.method, path: call.path, attempt: call.tries, reason: describeFailure(attempt), waitMs: decision }, call.log())
  call.beginWait()
  if (call.timerIndex >= 0) host.timers.remove(call)
  call.retryAt = now + decision
  call.waitTimer = host.clock.setTimer(() => { afterWait(call) }, decision)
  // Between attempts no socket holds the process open: the wait must, or a
  // script whose upstream is down exits mid-call. close() clears it.
  ;(call.waitTimer as { ref?: () => unknown }).ref?.()
}

/** The call settles while waiting to retry: the retry is not made. */
export function clearRetryTimer (call: Retrying): void {
  call.host.clock.clearTimer(call.waitTimer)
  call.waitTimer = null
}

function afterWait (call: Retrying): void {
  call.waitTimer = null
  const host = call.host
  // Settling clears this timer: it fires only for a call still waiting.
  call.endWait()
  // The timer may fire a hair before the time it was set for; the breaker must see the full wait.
  const now = Math.max(host.clock.now(), call.retryAt)
  let permit: PermitValue = Permit.Pass
  if (host.breaker !== null) {
    host.breakerLog = call.log()
    permit = host.breaker.acquire(now)
    host.breakerLog = host.log
    if (permit === Permit.Denied) {
      call.endWithLastFailure('circuit')
      return
    }
  }
  if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
    awaitToken(call, permit, now)
    return
  }
  host.counters.retries++
  call.sendAttempt(permit, now)
}
