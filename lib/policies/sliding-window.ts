/** Buckets in a window: the window reaches back between 90 % and 100 % of its length. */
const BUCKETS = 10

/**
 * The attempts judged over the last `windowMs`, and how many of them failed
 * or were slow, for the breaker's ratio rules.
 *
 * Counts live in a ring of ten time buckets of fixed typed arrays, with
 * running totals beside them: recording is an index and three increments,
 * a bucket's counts leave the totals when it is reused, and nothing is
 * allocated after construction.
 */
export class SlidingWindow {
  readonly #judged = new Uint32Array(BUCKETS)
  readonly #failed = new Uint32Array(BUCKETS)
  readonly #slow = new Uint32Array(BUCKETS)
  readonly #bucketMs: number
  /** The bucket being filled: `now / bucketMs`, rounded down. */
  #bucket = -Infinity
  judged = 0
  failed = 0
  slow = 0

  constructor (windowMs: number) {
    this.#bucketMs = windowMs / BUCKETS
  }

  record (now: number, failed: boolean, slow: boolean): void {
    const bucket = Math.floor(now / this.#bucketMs)
    // A clock read a little earlier (a verdict judged with the time of its headers) counts in the current bucket.
    if (bucket > this.#bucket) this.#advance(bucket)
    const i = this.#bucket % BUCKETS
    this.#judged[i]++
    this.judged++
    if (failed) {
      this.#failed[i]++
      this.failed++
    }
    if (slow) {
      this.#slow[i]++
      this.slow++
    }
  }

  /** Forgets every attempt: the circuit changed state. */
  clear (): void {
    this.#judged.fill(0)
    this.#failed.fill(0)
    this.#slow.fill(0)
    this.judged = 0
    this.failed = 0
    this.slow = 0
  }

  /** Empties the buckets of the time that passed since the last record. */
  #advance (bucket: number): void {
    if (bucket - this.#bucket >= BUCKETS) {
      this.clear()
    } else {
      for (let b = this.#bucket + 1; b <= bucket; b++) {
        const i = b % BUCKETS
        this.judged -= this.#judged[i]
        this.failed -= this.#failed[i]
        this.slow -= this.#slow[i]
        this.#judged[i] = 0
        this.#failed[i] = 0
        this.#slow[i] = 0
      }
    }
    this.#bucket = bucket
  }
}
