import type { ResolvedAdaptive } from '../options/resolve'

/** Told when the adaptive limit moves. */
export type LimitListener = (from: number, to: number) => void

/**
 * Calls under way, against `maxInFlight` and, when on, an AIMD limit that
 * follows the upstream's health (as Netflix's concurrency-limits does): after
 * each attempt it shrinks to `floor(limit × 0.9)` when the upstream dropped
 * it, and grows by one on any other answer while at least half of it is in
 * use. A call over the limit in force is refused at once.
 */
export class ConcurrencyLimit {
  /** Calls under way: waiting for a socket, in flight, or waiting to retry. */
  inFlight = 0
  readonly #max: number
  readonly #adaptive: ResolvedAdaptive | false
  #adaptiveLimit: number
  readonly #onChange: LimitListener

  constructor (maxInFlight: number, adaptive: ResolvedAdaptive | false, onChange: LimitListener) {
    this.#max = maxInFlight
    this.#adaptive = adaptive
    this.#adaptiveLimit = adaptive === false ? Infinity : adaptive.initial
    this.#onChange = onChange
  }

  /** The adaptive limit is on: attempts' ends move it. */
  get adaptive (): boolean {
    return this.#adaptive !== false
  }

  /** The limit in force. */
  get limit (): number {
    return Math.min(this.#max, this.#adaptiveLimit)
  }

  /** The adaptive limit, `undefined` when off. */
  get adaptiveLimit (): number | undefined {
    return this.#adaptive === false ? undefined : this.#adaptiveLimit
  }

  tryAcquire (): boolean {
    if (this.inFlight >= this.#max || this.inFlight >= this.#adaptiveLimit) return false
    this.inFlight++
    return true
  }

  release (): void {
    this.inFlight--
  }

  /** An attempt ended: `dropped` when the upstream could not take it. */
  onAttempt (dropped: boolean): void {
    const adaptive = this.#adaptive
    if (adaptive === false) return
    const from = this.#adaptiveLimit
    let to = from
    if (dropped) to = Math.max(adaptive.min, Math.floor(from * 0.9))
    else if (this.inFlight * 2 >= from) to = Math.min(adaptive.max, from + 1)
    if (to === from) return
    this.#adaptiveLimit = to
    this.#onChange(from, to)
  }
}
