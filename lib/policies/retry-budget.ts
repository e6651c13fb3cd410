/**
 * Caps retries across a whole client so an outage does not multiply the load
 * on the upstream: a retry is allowed while the retries of the last 10 s are
 * fewer than `ratio` x the calls of the last 10 s + `minPerSecond` x 10.
 *
 * Counts live in ten one-second buckets; recording a call is an index and an
 * increment, cheap enough for every call.
 */
const BUCKETS = 10

export class RetryBudget {
  private readonly calls = new Float64Array(BUCKETS)
  private readonly retries = new Float64Array(BUCKETS)
  private second = 0
  private readonly floor: number

  constructor (private readonly ratio: number, minPerSecond: number) {
    this.floor = minPerSecond * BUCKETS
  }

  recordCall (now: number): void {
    const second = Math.floor(now / 1000)
    if (second !== this.second) this.advance(second)
    this.calls[second % BUCKETS]++
  }

  /** Takes one retry from the budget if there is one left. */
  tryAcquire (now: number): boolean {
    const second = Math.floor(now / 1000)
    if (second !== this.second) this.advance(second)
    let calls = 0
    let retries = 0
    for (let i = 0; i < BUCKETS; i++) {
      calls += this.calls[i]
      retries += this.retries[i]
    }
    if (retries >= this.ratio * calls + this.floor) return false
    this.retries[second % BUCKETS]++
    return true
  }

  /** Gives back a retry taken at `takenAt` that was not made after all. */
  refund (takenAt: number, now: number): void {
    const second = Math.floor(now / 1000)
    if (second !== this.second) this.advance(second)
    const taken = Math.floor(takenAt / 1000)
    if (second - taken >= BUCKETS) return
    const index = taken % BUCKETS
    if (this.retries[index] > 0) this.retries[index]--
  }

  /** Clears the buckets of the seconds that passed since the last record. */
  private advance (second: number): void {
    const elapsed = second - this.second
    if (elapsed >= BUCKETS || elapsed < 0) {
      this.calls.fill(0)
      this.retries.fill(0)
    } else {
      for (let s = this.second + 1; s <= second; s++) {
        this.calls[s % BUCKETS] = 0
        this.retries[s % BUCKETS] = 0
      }
    }
    this.second = second
  }
}
