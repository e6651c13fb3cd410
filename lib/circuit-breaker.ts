import type { ResolvedBreaker } from './options'

export type CircuitState = 'closed' | 'open' | 'half-open'

/**
 * What `acquire()` grants a call: `Pass` when the circuit is closed, `Probe`
 * when half-open (the call's outcome decides the state), or `Denied`.
 */
export const Permit = { Denied: 0, Pass: 1, Probe: 2 } as const
export type PermitValue = typeof Permit[keyof typeof Permit]

/** Told of every change of state; `remainingMs` is how long an opened circuit stays open. */
export type TransitionListener = (from: CircuitState, to: CircuitState, remainingMs: number) => void

/**
 * One per client. Consecutive failed attempts open it; after `recoveryMs` it
 * half-opens and lets `halfOpenMaxProbes` calls through at once; a probe's
 * success closes it, a probe's failure opens it again.
 *
 * Open → half-open is decided from the clock when someone asks (a call or
 * `stats()`), so there is no reset timer to leak or to clear on close.
 */
export class CircuitBreaker {
  private current: CircuitState = 'closed'
  private failures = 0
  private openUntil = 0
  private probes = 0

  constructor (private readonly options: ResolvedBreaker, private readonly onTransition: TransitionListener) {}

  acquire (now: number): PermitValue {
    if (this.current === 'closed') return Permit.Pass
    if (this.current === 'open') {
      if (now < this.openUntil) return Permit.Denied
      this.transition('half-open')
    }
    if (this.probes >= this.options.halfOpenMaxProbes) return Permit.Denied
    this.probes++
    return Permit.Probe
  }

  /** An attempt ended with a response that is not a 5xx. */
  onSuccess (permit: PermitValue): void {
    if (this.current === 'closed') {
      this.failures = 0
    } else if (permit === Permit.Probe && this.current === 'half-open') {
      this.failures = 0
      this.transition('closed')
    }
  }

  /** An attempt failed: transport error, timeout or 5xx. */
  onFailure (permit: PermitValue, now: number): void {
    if (this.current === 'closed') {
      if (++this.failures >= this.options.failureThreshold) this.open(now)
    } else if (permit === Permit.Probe && this.current === 'half-open') {
      this.open(now)
    }
  }

  /** An attempt ended with no verdict on the upstream (the caller aborted, the client closed). */
  release (permit: PermitValue): void {
    if (permit === Permit.Probe && this.current === 'half-open' && this.probes > 0) this.probes--
  }

  state (now: number): CircuitState {
    if (this.current === 'open' && now >= this.openUntil) this.transition('half-open')
    return this.current
  }

  /** Milliseconds until the circuit half-opens; 0 once it has. */
  remainingMs (now: number): number {
    return this.current === 'open' ? Math.max(0, this.openUntil - now) : 0
  }

  private open (now: number): void {
    this.openUntil = now + this.options.recoveryMs
    this.transition('open')
  }

  private transition (to: CircuitState): void {
    const from = this.current
    this.current = to
    this.probes = 0
    this.onTransition(from, to, to === 'open' ? this.options.recoveryMs : 0)
  }
}
