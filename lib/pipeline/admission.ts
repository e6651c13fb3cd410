import { type CircuitBreaker, Permit, type PermitValue } from '../policies/circuit-breaker'
import type { ConcurrencyLimit } from '../policies/concurrency'
import { type CallDetails, CircuitOpenError, OverloadedError, TimeoutError, withoutStack } from '../errors'
import type { ClientEvents } from '../telemetry/events'
import type { Logger } from '../logger'
import type { Counters } from '../api/stats'

/**
 * Whether a call may start, in the SPEC's order, written once for every
 * call: the deadline, the concurrency limit, the caller's signal, the
 * circuit breaker. `admit` allocates nothing: refused calls come in bulk (an
 * open circuit, an overload), and a refusal must cost no more than its error.
 */

/** Why a call was refused; negative, so that an admission is a breaker `Permit` (positive). */
export const Refusal = { Deadline: -1, Overloaded: -2, Aborted: -3, CircuitOpen: -4 } as const
export type RefusalValue = typeof Refusal[keyof typeof Refusal]

export function isRefusal (admission: PermitValue | RefusalValue): admission is RefusalValue {
  return admission < 0
}

/** What admission needs of its client. */
export interface AdmissionHost {
  readonly name: string
  readonly limit: ConcurrencyLimit
  readonly breaker: CircuitBreaker | null
  readonly counters: Counters
  readonly events: ClientEvents
  /** The logger a breaker transition goes to: that of the call acting on the breaker, else the client's. */
  breakerLog: Logger
  readonly log: Logger
}

/**
 * Admits a call (a breaker permit, `Permit.Pass` or `Permit.Probe`; the
 * call then holds a slot of the limit) or says why not (a `Refusal`, and the
 * call holds nothing). `log` is the call's logger, for a transition of the
 * breaker its arrival causes.
 */
export function admit (host: AdmissionHost, deadlineAt: number | undefined, signal: AbortSignal | undefined, log: Logger, now: number): PermitValue | RefusalValue {
  if (deadlineAt !== undefined && deadlineAt <= now) return Refusal.Deadline
  const limit = host.limit
  if (!limit.tryAcquire()) return Refusal.Overloaded
  if (signal?.aborted === true) {
    limit.release()
    return Refusal.Aborted
  }
  const breaker = host.breaker
  if (breaker === null) return Permit.Pass
  host.breakerLog = log
  const permit = breaker.acquire(now)
  host.breakerLog = host.log
  if (permit !== Permit.Denied) return permit
  limit.release()
  return Refusal.CircuitOpen
}

/**
 * The refused call's end: counted, published, and rejected with its error
 * (the caller's reason for an aborted signal). Nothing is sent and neither
 * the breaker nor the budget hears of it.
 */
export function refuse (host: AdmissionHost, refusal: RefusalValue, method: string, path: string, signal: AbortSignal | undefined, log: Logger, now: number): Promise<never> {
  const counters = host.counters
  const client = host.name
  const details: CallDetails = { clientName: client, method, path, attempts: 0 }
  switch (refusal) {
    case Refusal.Deadline:
      counters.requests++
      counters.failures++
      host.events.deadlineExceeded({ client, method, path, attempts: 0 }, log)
      return Promise.reject(new TimeoutError(details, 'deadline', 0))
    case Refusal.Overloaded: {
      counters.overloaded++
      const limit = host.limit.limit
      host.events.overloaded(client, method, path, limit)
      return Promise.reject(withoutStack(OverloadedError, details, limit))
    }
    case Refusal.Aborted:
      counters.requests++
      return Promise.reject((signal as AbortSignal).reason)
    default: {
      counters.requests++
      counters.shortCircuited++
      const breaker = host.breaker as CircuitBreaker
      const remainingMs = breaker.remainingMs(now)
      host.events.shortCircuited(client, method, path, remainingMs)
      return Promise.reject(withoutStack(CircuitOpenError, details, remainingMs, breaker.openedBy))
    }
  }
}
