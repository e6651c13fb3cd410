import type { Attempt } from './attempt'
import type { CircuitBreaker, PermitValue } from '../policies/circuit-breaker'
import { Permit, Verdict } from '../policies/circuit-breaker'
import type { Clock } from '../clock'
import type { Counters } from '../api/stats'
import { AuthenticationError } from '../errors'
import type { Logger } from '../logger'
import { type PreparedRequest, withToken } from './prepare'
import type { RateLimiter } from '../policies/rate-limit'
import { isRedirect, redirectedRequest } from './redirect'

/**
 * What a call does with an answer it may follow rather than take: a
 * redirect it follows (redirect.ts says where), or a 401 under `auth.token`,
 * after which it resends once with a new token. Neither uses an attempt.
 */

/** What following up needs of the client. */
export interface FollowUpHost {
  readonly clock: Clock
  readonly counters: Counters
  readonly basePath: string
  readonly breaker: CircuitBreaker | null
  readonly rateLimit: RateLimiter | null
  breakerLog: Logger
  readonly log: Logger
}

/** What following up needs of the call. */
export interface Following {
  readonly host: FollowUpHost
  request: PreparedRequest
  finalPath: string
  redirects: number
  readonly clientName: string
  readonly method: string
  readonly path: string
  readonly attempts: number
  sendFollowUp(permit: PermitValue, now: number): void
  awaitReauthentication(): void
  resumeAfterReauthentication(): boolean
  win(attempt: Attempt): void
  fail(error: unknown): void
  log(): Logger
}

/** Follows a redirect or resends after a 401 when the call may; `false` to take the answer as it is. */
export function followUp (call: Following, attempt: Attempt): boolean {
  const status = attempt.statusCode
  const request = call.request
  if (status === 401) {
    if (request.tokenUse === null || !request.replayable) return false
    reauthenticate(call, attempt, request.tokenUse)
    return true
  }
  if (!isRedirect(status) || request.followRedirects === 0) return false
  const host = call.host
  const redirected = redirectedRequest(request, status, attempt.headers?.location, attempt.upstream.origin, host.basePath)
  if (redirected === null) return false
  const now = host.clock.now()
  const permit = followUpPermit(call, now)
  if (permit === Permit.Denied) return false
  call.request = redirected.request
  call.finalPath = redirected.path
  call.redirects++
  host.counters.redirects++
  call.sendFollowUp(permit, now)
  return true
}

/** A new token, shared with every call that got a 401 from the same one; then the one resend. */
function reauthenticate (call: Following, answer: Attempt, use: NonNullable<PreparedRequest['tokenUse']>): void {
  call.awaitReauthentication()
  use.source.refresh(use.token).then((token) => {
    if (!call.resumeAfterReauthentication()) return
    const now = call.host.clock.now()
    const permit = followUpPermit(call, now)
    if (permit === Permit.Denied) {
      call.win(answer)
      return
    }
    call.request = withToken(call.request, use.source, token, true)
    call.sendFollowUp(permit, now)
  }, (error: unknown) => {
    call.fail(new AuthenticationError({ clientName: call.clientName, method: call.method, path: call.path, attempts: call.attempts, cause: error }))
  })
}

/**
 * A follow-up is sent only with the breaker's permission and, under a rate
 * limit, a token there at once (it does not wait in line): otherwise the
 * call takes the answer it has.
 */
function followUpPermit (call: Following, now: number): PermitValue {
  const host = call.host
  let permit: PermitValue = Permit.Pass
  if (host.breaker !== null) {
    host.breakerLog = call.log()
    permit = host.breaker.acquire(now)
    host.breakerLog = host.log
  }
  if (permit === Permit.Denied || host.rateLimit === null || host.rateLimit.tryTake(now)) return permit
  host.breaker?.record(permit, Verdict.None, now)
  return Permit.Denied
}
