import type { Clock } from './clock'

/** Something with a deadline: linked into a queue by its own fields, so adding one allocates nothing. */
export interface DeadlineEntry {
  deadlineAt: number
  deadlinePrev: DeadlineEntry | null
  deadlineNext: DeadlineEntry | null
  deadlineQueue: DeadlineQueue | null
  onDeadline(): void
}

/**
 * Deadlines that all share one duration. Entries are added in time order, so
 * the queue is sorted by construction: the head expires first, and one timer
 * for the head serves every entry. Removing an entry is an unlink, O(1).
 *
 * This replaces a timer per call (undici's own timers tick only about once a
 * second, too coarse for short timeouts). A busy client with a 10 s timeout
 * fires this timer about once every 10 s, whatever its call rate.
 */
export class DeadlineQueue {
  private head: DeadlineEntry | null = null
  private tail: DeadlineEntry | null = null
  private timer: unknown = null
  private readonly expire = (): void => this.onTimer()

  constructor (readonly durationMs: number, private readonly clock: Clock) {}

  add (entry: DeadlineEntry, now: number): void {
    entry.deadlineAt = now + this.durationMs
    entry.deadlineQueue = this
    entry.deadlineNext = null
    entry.deadlinePrev = this.tail
    if (this.tail === null) {
      this.head = entry
    } else {
      this.tail.deadlineNext = entry
    }
    this.tail = entry
    if (this.timer === null) this.timer = this.clock.setTimer(this.expire, this.durationMs)
  }

  remove (entry: DeadlineEntry): void {
    const prev = entry.deadlinePrev
    const next = entry.deadlineNext
    if (prev === null) this.head = next
    else prev.deadlineNext = next
    if (next === null) this.tail = prev
    else next.deadlinePrev = prev
    entry.deadlinePrev = null
    entry.deadlineNext = null
    entry.deadlineQueue = null
  }

  /** Stops the timer; entries still queued stay until removed. */
  clear (): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer)
    this.timer = null
  }

  private onTimer (): void {
    this.timer = null
    const now = this.clock.now()
    let entry = this.head
    while (entry !== null && entry.deadlineAt <= now) {
      this.remove(entry)
      entry.onDeadline()
      entry = this.head
    }
    // The head may have been added after the timer was set: sleep until it is due.
    if (entry !== null) this.timer = this.clock.setTimer(this.expire, entry.deadlineAt - now)
  }
}
