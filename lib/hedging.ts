/** Samples kept: the client's last 1,000 attempts. */
const WINDOW = 1_000
/** No hedge before this many samples: a percentile of a handful of calls means nothing. */
const MIN_SAMPLES = 100
/** The percentile is recomputed after this many new samples, not on every call. */
const REFRESH_EVERY = 50

/**
 * The 95th percentile of the time to response headers over a client's last
 * 1,000 attempts: a ring of samples in a fixed typed array, refreshed by a
 * sort of a scratch copy every 50 samples, so recording is O(1) and nothing
 * is allocated per call. Attempts cut as losing hedges are recorded with the
 * time they had run: leaving them out would hide the very tail it measures.
 */
export class LatencyTracker {
  readonly #ring = new Float64Array(WINDOW)
  readonly #scratch = new Float64Array(WINDOW)
  #count = 0
  #next = 0
  #sinceRefresh = 0
  #p95 = Infinity

  record (ms: number): void {
    this.#ring[this.#next] = ms
    this.#next = (this.#next + 1) % WINDOW
    if (this.#count < WINDOW) this.#count++
    if (++this.#sinceRefresh >= REFRESH_EVERY && this.#count >= MIN_SAMPLES) this.#refresh()
  }

  /** The hedge delay `'auto'` stands for; `Infinity` (no hedge) before 100 samples. */
  get p95 (): number {
    return this.#p95
  }

  #refresh (): void {
    this.#sinceRefresh = 0
    const count = this.#count
    const sorted = this.#scratch.subarray(0, count)
    sorted.set(this.#ring.subarray(0, count))
    sorted.sort()
    this.#p95 = sorted[Math.min(count - 1, Math.floor(count * 0.95))]
  }
}
