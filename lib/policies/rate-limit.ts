import type { Clock } from '../clock'

/**
 * A client's rate limit: calls wait for their turn in the order they came,
 * or are refused when it would not come in time. The tokens come from a
 * `TokenSource`: this instance's own bucket (below), or a bucket in Redis
 * shared by a fleet (`rate-limit-redis.ts`).
 */

/** A call waiting for a token. */
export interface TokenWaiter {
  /** Its turn came: the token is taken for it. */
  onToken(now: number): void
  /** Its turn cannot come in time (a pause pushed it back, a fleet's bucket is drained): it is refused. */
  onNoToken(retryAfterMs: number): void
}

/** Where the tokens come from. */
export interface TokenSource {
  /** A token can be taken at `now`. */
  ready(now: number): boolean
  /** Takes the token `ready()` promised. */
  take(now: number): void
  /** When the `index`-th token from now (0: the next one) can be taken; for a fleet, an estimate. */
  turnAt(now: number, index: number): number
  /** When to look again for the next token; `Infinity` while an answer from Redis is awaited. */
  wakeAt(now: number): number
  /** Whole ms to tell a refused call when the source refuses every call now (a fleet without Redis); 0 when it does not. */
  refusing(now: number): number
  /** Nothing is taken before `until`; then the bucket starts empty. `false` when it was paused that long already. */
  pause(until: number, now: number): boolean
  /** Asks for more tokens when calls wait for them (a fleet); the answer comes through `RateLimiter.wake()`. */
  fill(now: number): void
  /** An answer from Redis is awaited: turns are not known until it comes (within `redisTimeoutMs`). */
  awaiting(): boolean
  /** Times of its own waits end with the client. */
  close(): void
}

/** Where a pause came from: a header of the upstream's answer, or the fleet's shared pause. */
export type PauseReason = 'retry-after' | 'ratelimit' | 'x-ratelimit' | 'fleet'

interface Waiting {
  readonly waiter: TokenWaiter
  /** Its turn must come by then: the earlier of `maxWaitMs` from its arrival and its call's end. */
  readonly limitAt: number
}

/** Floating-point slack: a token that has all but accrued is there. */
const EPSILON = 1e-9

/**
 * The waiting line in front of a `TokenSource`: FIFO, with one timer for the
 * head's turn. A call that finds no one waiting and a token there takes it
 * without allocating anything.
 */
export class RateLimiter {
  readonly source: TokenSource
  readonly maxWaitMs: number
  readonly #clock: Clock
  readonly #line: Waiting[] = []
  #timer: unknown = null
  #timerAt = Infinity
  readonly #onTimer = (): void => {
    this.#timer = null
    this.#timerAt = Infinity
    this.wake()
  }

  constructor (source: TokenSource, maxWaitMs: number, clock: Clock) {
    this.source = source
    this.maxWaitMs = maxWaitMs
    this.#clock = clock
  }

  /** Takes a token at once when no one waits and one is there. */
  tryTake (now: number): boolean {
    if (this.#line.length !== 0 || !this.source.ready(now)) return false
    this.source.take(now)
    return true
  }

  /**
   * Puts `waiter` in line if its turn comes within `maxWaitMs` and before
   * `endsAt`: returns 0. Otherwise returns the whole ms until a token is
   * expected (at least 1), and the waiter is not in line.
   */
  wait (waiter: TokenWaiter, now: number, endsAt: number): number {
    const refusing = this.source.refusing(now)
    if (refusing > 0) return refusing
    const turn = this.source.turnAt(now, this.#line.length)
    // An attempt needs some time of its own: a turn in the call's last millisecond is no turn.
    const limitAt = Math.min(now + this.maxWaitMs, endsAt - 1)
    if (turn > limitAt + EPSILON) return Math.max(1, Math.ceil(turn - now))
    this.#line.push({ waiter, limitAt })
    this.#schedule(now)
    return 0
  }

  /** Takes `waiter` out of line (its call was cut). */
  cancel (waiter: TokenWaiter): void {
    const line = this.#line
    for (let i = 0; i < line.length; i++) {
      if (line[i].waiter !== waiter) continue
      line.splice(i, 1)
      // Those behind it move up: the head's turn may be sooner.
      if (i === 0) this.#schedule(this.#clock.now())
      return
    }
  }

  /**
   * Nothing is taken for `ms`; then the bucket starts empty. Waiters whose
   * turn now comes too late are refused. `false` when it was paused that
   * long already.
   */
  pause (ms: number, now: number): boolean {
    if (!this.source.pause(now + ms, now)) return false
    this.wake()
    return true
  }

  /** Something changed (a timer, an answer from Redis, a pause): refuse who can no longer be served in time, serve who can. */
  wake (): void {
    const now = this.#clock.now()
    const line = this.#line
    const source = this.source
    while (line.length !== 0 && source.ready(now)) {
      const next = line.shift() as Waiting
      source.take(now)
      next.waiter.onToken(now)
    }
    if (!source.awaiting()) this.#review(now)
    this.#schedule(now)
  }

  /** The client closes: its waiting calls are cut by the client, the timer goes. */
  close (): void {
    this.#line.length = 0
    this.#clearTimer()
    this.source.close()
  }

  #review (now: number): void {
    const line = this.#line
    for (let i = 0; i < line.length;) {
      const refusing = this.source.refusing(now)
      const turn = refusing > 0 ? Infinity : this.source.turnAt(now, i)
      const entry = line[i]
      if (turn <= entry.limitAt + EPSILON) {
        i++
        continue
      }
      line.splice(i, 1)
      entry.waiter.onNoToken(refusing > 0 ? refusing : Math.max(1, Math.ceil(turn - now)))
    }
  }

  #schedule (now: number): void {
    const line = this.#line
    if (line.length === 0) {
      this.#clearTimer()
      return
    }
    const source = this.source
    source.fill(now)
    let at = source.wakeAt(now)
    // A fleet's turns are estimates: a waiter whose limit passes first is refused then (once Redis has answered).
    if (!source.awaiting()) for (const entry of line) if (entry.limitAt < at) at = entry.limitAt
    if (at === this.#timerAt) return
    this.#clearTimer()
    if (at === Infinity) return
    this.#timerAt = at
    this.#timer = this.#clock.setTimer(this.#onTimer, Math.max(0, at - now))
    // A call waiting for its turn has no socket yet to hold the process open: the wait must.
    ;(this.#timer as { ref?: () => unknown }).ref?.()
  }

  #clearTimer (): void {
    if (this.#timer === null) return
    this.#clock.clearTimer(this.#timer)
    this.#timer = null
    this.#timerAt = Infinity
  }
}

/**
 * This instance's own token bucket: `burst` tokens, refilled at `perSecond`,
 * full at the start. A pause empties it: it refills from the pause's end.
 */
export class LocalBucket implements TokenSource {
  readonly #perMs: number
  readonly #burst: number
  #tokens: number
  #updatedAt: number
  #pausedUntil = -Infinity

  constructor (perSecond: number, burst: number, now: number) {
    this.#perMs = perSecond / 1000
    this.#burst = burst
    this.#tokens = burst
    this.#updatedAt = now
  }

  ready (now: number): boolean {
    if (now < this.#pausedUntil) return false
    this.#refill(now)
    return this.#tokens >= 1 - EPSILON
  }

  take (): void {
    this.#tokens -= 1
  }

  turnAt (now: number, index: number): number {
    let start = now
    let level: number
    if (now < this.#pausedUntil) {
      start = this.#pausedUntil
      level = 0
    } else {
      this.#refill(now)
      level = this.#tokens
    }
    const missing = index + 1 - level
    return missing <= EPSILON ? start : start + missing / this.#perMs
  }

  wakeAt (now: number): number {
    return this.turnAt(now, 0)
  }

  refusing (): number {
    return 0
  }

  pause (until: number): boolean {
    if (until <= this.#pausedUntil) return false
    this.#pausedUntil = until
    this.#tokens = 0
    this.#updatedAt = until
    return true
  }

  fill (): void {}

  awaiting (): boolean {
    return false
  }

  close (): void {}

  #refill (now: number): void {
    if (now <= this.#updatedAt) return
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#updatedAt) * this.#perMs)
    this.#updatedAt = now
  }
}
