import type { ResolvedBreaker } from '../options/breaker'
import type { RandomSource } from '../clock'
import type { CircuitOpenedBy } from '../errors'
import { SlidingWindow } from './sliding-window'

export type CircuitState = 'closed' | 'open' | 'half-open'

/** Why the circuit changed state: the rule that opened it, a probe's verdict, or the end of the open time. */
export type CircuitCause = CircuitOpenedBy | 'probe' | 'recovery'

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

/** What the breaker reads of the resolved `circuitBreaker` option (`openOnRetryAfter` is the call's to apply). */
export type BreakerSettings = Omit<ResolvedBreaker, 'openOnRetryAfter'>

/** The share of a failed probe's next open time left to chance, either way. */
const REOPEN_JITTER = 0.25

/**
 * One per client. Three rules open it, whichever fires first: consecutive
 * failed attempts, and, over the last `samplingMs`, the share of failed or
 * of slow attempts. After the open time it half-opens and lets
 * `halfOpenMaxProbes` attempts through at once; a probe's success closes
 * it, a probe's failure opens it again (for twice as long, with
 * `recoveryMaxMs`). A `Retry-After` can open it until the time the upstream
 * asked for.
 *
 * Open → half-open is decided from the clock when someone asks (an attempt or
 * `stats()`), so there is no reset timer to leak or to clear on close. The
 * window exists only when a ratio rule is set: without one, a verdict costs
 * what it cost before.
 */
export class CircuitBreaker {
  /** Verdicts need the time even on success: the window buckets them. */
  readonly clocked: boolean
  /** `Infinity` when there is no slow-call rule: no verdict needs its time to headers. */
  readonly slowCallMs: number
  #state: CircuitState = 'closed'
  #failures = 0
  #openUntil = 0
  #probes = 0
  #openedBy: CircuitOpenedBy = 'failures'
  /** The open time a failed probe doubles: `recoveryMs` until one fails, and again after a close. */
  #reopenMs: number
  readonly #window: SlidingWindow | null
  readonly #failureRatio: number
  readonly #slowCallRatio: number
  readonly #minimumThroughput: number
  readonly #recoveryMaxMs: number
  readonly #settings: BreakerSettings
  readonly #random: RandomSource
  readonly #onTransition: TransitionListener

  constructor (settings: BreakerSettings, onTransition: TransitionListener, random: RandomSource) {
    this.#settings = settings
    this.#onTransition = onTransition
    this.#random = random
    this.#reopenMs = settings.recoveryMs
    this.#recoveryMaxMs = settings.recoveryMaxMs
    this.#failureRatio = settings.failureRatio ?? Infinity
    this.slowCallMs = settings.slowCallMs ?? Infinity
    this.#slowCallRatio = settings.slowCallRatio
    this.#minimumThroughput = settings.minimumThroughput
    const ratios = settings.failureRatio !== undefined || settings.slowCallMs !== undefined
    this.#window = ratios ? new SlidingWindow(settings.samplingMs) : null
    this.clocked = ratios
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

  /**
   * The one verdict of an attempt that held `permit`. `elapsedMs` is the
   * time to its response headers (or to its failure, without headers); it
   * is read only with a slow-call rule, and `now` on success only with a
   * window (`clocked`).
   */
  record (permit: PermitValue, verdict: VerdictValue, now: number, elapsedMs = 0): void {
    if (verdict === Verdict.Success) {
      if (this.#state === 'closed') {
        this.#failures = 0
        if (this.#window !== null) this.#judge(now, false, elapsedMs)
      } else if (permit === Permit.Probe && this.#state === 'half-open') {
        this.#reopenMs = this.#settings.recoveryMs
        this.#transition('closed', 0, 'probe')
      }
    } else if (verdict === Verdict.Failure) {
      if (this.#state === 'closed') {
        if (++this.#failures >= this.#settings.failureThreshold) this.#open(now, this.#settings.recoveryMs, 'failures')
        else if (this.#window !== null) this.#judge(now, true, elapsedMs)
      } else if (permit === Permit.Probe && this.#state === 'half-open') {
        this.#open(now, this.#nextReopenMs(), 'probe')
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

  /** The rule that last opened the circuit; a failed probe keeps it. */
  get openedBy (): CircuitOpenedBy {
    return this.#openedBy
  }

  /** Adds a closed circuit's verdict to the window and opens on the first ratio it reaches. */
  #judge (now: number, failed: boolean, elapsedMs: number): void {
    const window = this.#window as SlidingWindow
    const slow = elapsedMs > this.slowCallMs
    window.record(now, failed, slow)
    const judged = window.judged
    if (judged < this.#minimumThroughput) return
    // Divided, not multiplied: 6 / 20 is exactly the double 0.3 is, 0.3 * 20 is not 6.
    if (window.failed / judged >= this.#failureRatio) this.#open(now, this.#settings.recoveryMs, 'failure-ratio')
    else if (window.slow / judged >= this.#slowCallRatio) this.#open(now, this.#settings.recoveryMs, 'slow-calls')
  }

  /** A failed probe's open time: twice the last, ± a quarter at random so instances do not probe in step, within `recoveryMaxMs`. */
  #nextReopenMs (): number {
    const cap = this.#recoveryMaxMs
    if (cap <= this.#settings.recoveryMs) return cap
    this.#reopenMs = Math.min(cap, this.#reopenMs * 2)
    const jittered = this.#reopenMs * (1 - REOPEN_JITTER + 2 * REOPEN_JITTER * this.#random())
    return Math.min(cap, Math.round(jittered))
  }

  #open (now: number, ms: number, cause: CircuitCause): void {
    if (cause !== 'probe') this.#openedBy = cause as CircuitOpenedBy
    this.#openUntil = now + ms
    this.#transition('open', ms, cause)
  }

  #transition (to: CircuitState, remainingMs: number, cause: CircuitCause): void {
    const from = this.#state
    this.#state = to
    this.#probes = 0
    this.#failures = 0
    // A closed circuit starts its window afresh; an open one records nothing.
    this.#window?.clear()
    this.#onTransition(from, to, remainingMs, cause)
  }
}
