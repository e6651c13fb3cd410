/**
 * Time, injectable: retry waits, the retry budget, the breaker and the
 * timeouts all read it, so tests can drive them with a manual clock.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number
  /** Calls `callback` after `ms`; the timer must not keep the process alive. */
  setTimer(callback: () => void, ms: number): unknown
  clearTimer(timer: unknown): void
}

export const systemClock: Clock = {
  now: Date.now,
  setTimer (callback, ms) {
    return setTimeout(callback, ms).unref()
  },
  clearTimer (timer) {
    clearTimeout(timer as NodeJS.Timeout)
  }
}

/** A source of random numbers in [0, 1), injectable for exact jitter tests. */
export type RandomSource = () => number
