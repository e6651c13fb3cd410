export type CircuitState = 'closed' | 'open' | 'half-open'

/** Why the circuit changed state. */
export type CircuitCause = 'failures' | 'retry-after' | 'probe' | 'recovery'

/**
 * What `acquire()` grants an attempt: `Pass` when the circuit is closed,
 * `Probe` when half-open (its verdict decides the state), or `Denied`.
 */
export const Permit = { Denied: 0, Pass: 1, Probe: 2 } as const
export type PermitValue = typeof Permit[keyof typeof Permit]

/** An attempt's verdict on the upstream's health, given once per attempt. */
export const Verdict = { None: 0, Success: 1, Failure: 2 } as const
export type VerdictValue = typeof Verdict[keyof typeof Verdict]

/** Told of every change of state; `remainingMs` is how long an opened circuit stays open. */
export type TransitionListener = (from: CircuitState, to: CircuitState, remainingMs: number, cause: CircuitCause) => void

export interface BreakerSettings {
  readonly failureThreshold: number
  readonly recoveryMs: number
  readonly halfOpenMaxProbes: number
}

/**
 * One per client. Consecutive failed attempts open it; after `recoveryMs` it
 * half-opens and lets `halfOpenMaxProbes` attempts through at once; a
 * probe's success closes it, a probe's failure opens it again. A `Retry-After`
 * can open it until the time the upstream asked for.
 *
 * Open → half-open is decided from the clock when someone asks (an attempt or
 * `stats()`), so there is no reset timer to leak or to clear on close.
 */
export class CircuitBreaker {
  #state: CircuitState = 'closed'
  #failures = 0
  #openUntil = 0
  #probes = 0
  readonly #settings: BreakerSettings
  readonly #onTransition: TransitionListener

  constructor (settings: BreakerSettings, onTransition: TransitionListener) {
    this.#settings = settings
    this.#onTransition = onTransition
  }

  /** The circuit is open and stays so at `now`: `acquire()` would refuse. Changes nothing. */
  refuses (now: number): boolean {
    return this.#state === 'open' && now < this.#openUntil
  }

  acquire (now: number): PermitValue {
    if (this.#state === 'closed') return Permit.Pass
    if (this.#state === 'open') {
      if (now < this.#openUntil) return Permit.Denied
      this.#transition('half-open', 0, 'recovery')
    }
    if (this.#probes >= this.#settings.halfOpenMaxProbes) return Permit.Denied
    this.#probes++
    return Permit.Probe
  }

  /** The one verdict of an attempt that held `permit`. */
  record (permit: PermitValue, verdict: VerdictValue, now: number): void {
    if (verdict === Verdict.Success) {
      if (this.#state === 'closed') this.#failures = 0
      else if (permit === Permit.Probe && this.#state === 'half-open') this.#transition('closed', 0, 'probe')
    } else if (verdict === Verdict.Failure) {
      if (this.#state === 'closed') {
        if (++this.#failures >= this.#settings.failureThreshold) this.#open(now, this.#settings.recoveryMs, 'failures')
      } else if (permit === Permit.Probe && this.#state === 'half-open') {
        this.#open(now, this.#settings.recoveryMs, 'probe')
      }
    } else if (permit === Permit.Probe && this.#state === 'half-open' && this.#probes > 0) {
      // No verdict (the caller aborted, the client closed, a losing hedge): the probe slot is free again.
      this.#probes--
    }
  }

  /**
   * The upstream asked every caller to wait `ms` (`Retry-After`): open until
   * exactly then. Its word wins over the failure count's `recoveryMs`, so the
   * call that got the answer finds the circuit half-open when its wait ends.
   */
  openFor (ms: number, now: number): void {
    this.#open(now, ms, 'retry-after')
  }

  state (now: number): CircuitState {
    if (this.#state === 'open' && now >= this.#openUntil) this.#transition('half-open', 0, 'recovery')
    return this.#state
  }

  /** Whole milliseconds until the circuit half-opens (rounded up, so at least 1 while open); 0 once it has. */
  remainingMs (now: number): number {
    return this.#state === 'open' && now < this.#openUntil ? Math.ceil(this.#openUntil - now) : 0
  }

  #open (now: number, ms: number, cause: CircuitCause): void {
    this.#openUntil = now + ms
    this.#transition('open', ms, cause)
  }

  #transition (to: CircuitState, remainingMs: number, cause: CircuitCause): void {
    const from = this.#state
    this.#state = to
    this.#probes = 0
    this.#failures = 0
    this.#onTransition(from, to, remainingMs, cause)
  }
}
