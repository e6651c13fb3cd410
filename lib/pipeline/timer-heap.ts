import { rootScope } from '../async-context'
import type { Clock } from '../clock'

/** Something with a deadline, kept in the heap by its own fields: adding one allocates nothing. */
export interface TimedEntry {
  /** When it falls due, in the clock's ms; read only by the heap. */
  timerAt: number
  /** Its place in the heap, -1 when not in it. */
  timerIndex: number
  onTimer(): void
}

/**
 * Every deadline of a client (attempt timeouts, total timeouts, inbound
 * deadlines, hedge delays) in one binary min-heap, with a single armed
 * timer for the earliest. Add and remove are O(log n) in the entries in
 * flight; memory does not depend on how many distinct durations are used.
 *
 * The timer is re-armed only when an entry earlier than it arrives; an
 * entry removed before its time leaves the timer as it is, and the wake-up
 * then finds nothing due and sleeps until the new head. It is armed from
 * the root async scope, so expiries run in no request's context; each
 * entry re-enters its own call's.
 */
export class TimerHeap {
  readonly #clock: Clock
  readonly #heap: TimedEntry[] = []
  #timer: unknown = null
  #armedAt = Infinity
  readonly #expire = (): void => { this.#onTimer() }
  readonly #arm = (ms: number): void => { this.#timer = this.#clock.setTimer(this.#expire, ms) }

  constructor (clock: Clock) {
    this.#clock = clock
  }

  add (entry: TimedEntry, at: number): void {
    const heap = this.#heap
    entry.timerAt = at
    entry.timerIndex = heap.length
    heap.push(entry)
    this.#up(entry.timerIndex)
    if (at < this.#armedAt) this.#schedule(at)
  }

  /** Takes `entry` out; it must be in the heap (`timerIndex >= 0`). */
  remove (entry: TimedEntry): void {
    const index = entry.timerIndex
    entry.timerIndex = -1
    const heap = this.#heap
    const last = heap.pop() as TimedEntry
    if (index === heap.length) return
    heap[index] = last
    last.timerIndex = index
    this.#down(index)
    this.#up(last.timerIndex)
  }

  /** Stops the timer; the heap stays as it is. */
  stop (): void {
    if (this.#timer !== null) this.#clock.clearTimer(this.#timer)
    this.#timer = null
    this.#armedAt = Infinity
  }

  #schedule (at: number): void {
    if (this.#timer !== null) this.#clock.clearTimer(this.#timer)
    this.#armedAt = at
    // Node's timers may fire up to 1 ms before a sub-millisecond due time: round up.
    rootScope.runInAsyncScope(this.#arm, null, Math.max(1, Math.ceil(at - this.#clock.now())))
  }

  #onTimer (): void {
    this.#timer = null
    // Entries added by the expiries below must not arm the timer: the head is armed once, after.
    this.#armedAt = -Infinity
    const heap = this.#heap
    const now = this.#clock.now()
    while (heap.length > 0 && heap[0].timerAt <= now) {
      const entry = heap[0]
      this.remove(entry)
      entry.onTimer()
    }
    this.#armedAt = Infinity
    if (heap.length > 0) this.#schedule(heap[0].timerAt)
  }

  #up (index: number): void {
    const heap = this.#heap
    const entry = heap[index]
    while (index > 0) {
      const parentIndex = (index - 1) >> 1
      const parent = heap[parentIndex]
      if (parent.timerAt <= entry.timerAt) break
      heap[index] = parent
      parent.timerIndex = index
      index = parentIndex
    }
    heap[index] = entry
    entry.timerIndex = index
  }

  #down (index: number): void {
    const heap = this.#heap
    const entry = heap[index]
    const length = heap.length
    for (;;) {
      const left = 2 * index + 1
      if (left >= length) break
      const right = left + 1
      const child = right < length && heap[right].timerAt < heap[left].timerAt ? right : left
      if (heap[child].timerAt >= entry.timerAt) break
      heap[index] = heap[child]
      heap[index].timerIndex = index
      index = child
    }
    heap[index] = entry
    entry.timerIndex = index
  }
}
