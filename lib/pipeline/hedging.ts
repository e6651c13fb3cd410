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
    const samples = this.#scratch.subarray(0, count)
    samples.set(this.#ring.subarray(0, count))
    this.#p95 = select(samples, Math.min(count - 1, Math.floor(count * 0.95)))
  }
}

/**
 * The k-th smallest of `values` (0-based), in O(n) on average: a quickselect
 * that reorders `values` in place, with the middle element as pivot. No sort:
 * only the one percentile is needed.
 */
export function select (values: Float64Array, k: number): number {
  let low = 0
  let high = values.length - 1
  while (low < high) {
    const pivot = values[(low + high) >> 1]
    let i = low
    let j = high
    while (i <= j) {
      while (values[i] < pivot) i++
      while (values[j] > pivot) j--
      if (i <= j) {
        const swap = values[i]
        values[i] = values[j]
        values[j] = swap
        i++
        j--
      }
    }
    // [low, j] <= pivot <= [i, high]; between them, values equal to the pivot.
    if (k <= j) high = j
    else if (k >= i) low = i
    else return values[k]
  }
  return values[k]
}

/** A call whose hedge delay has passed. */
export interface HedgeDue {
  sendHedge(): void
}

let due: HedgeDue[] = []
let flushing = false

function sendDue (): void {
  const calls = due
  due = []
  flushing = false
  for (const call of calls) call.sendHedge()
}

/**
 * Sends a due hedge after the event loop's next poll for I/O, not from the
 * timer. Timers run before the loop reads its sockets: on a busy loop the
 * answer of a call whose delay has just passed is often already there,
 * unread, and a hedge sent from the timer would be wasted (an extra request,
 * and a socket closed to cancel it). One `setImmediate` serves every hedge
 * due in the same turn; it is scheduled from the timer heap's expiry, which
 * runs in no request's async context (each call re-enters its own).
 */
export function hedgeAfterPoll (call: HedgeDue): void {
  due.push(call)
  if (flushing) return
  flushing = true
  setImmediate(sendDue)
}
