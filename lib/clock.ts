/**
 * Time, injectable: timeouts, retry waits, the retry budget and the breaker
 * all read it, so tests can drive them with a manual clock.
 */
export interface Clock {
  /** Monotonic milliseconds: deadlines and the breaker must not follow the system clock when NTP steps it. */
  now(): number
  /** Milliseconds since the epoch, only to read `Retry-After` HTTP-dates; `now()` when left out. */
  wallNow?(): number
  /** Calls `callback` after `ms`; the timer must not keep the process alive. */
  setTimer(callback: () => void, ms: number): unknown
  clearTimer(timer: unknown): void
}

export const systemClock: Clock = {
  now: () => performance.now(),
  wallNow: Date.now,
  setTimer (callback, ms) {
    return setTimeout(callback, ms).unref()
  },
  clearTimer (timer) {
    clearTimeout(timer as NodeJS.Timeout)
  }
}

/** A source of random numbers in [0, 1), injectable for exact jitter tests. */
export type RandomSource = () => number
