import { setTimeout as sleep } from 'node:timers/promises'
import type { Clock, RandomSource } from '../../lib/clock'
import { HttpClient } from '../../lib/api/http-client'
import { type Logger, silentLogger } from '../../lib/logger'
import { resolveClientOptions } from '../../lib/options/resolve'
import type { ClientOptions } from '../../lib/types'

interface ManualTimer {
  readonly id: number
  readonly at: number
  readonly ms: number
  readonly callback: () => void
}

/** A whole second, so that HTTP-dates (second resolution) convert to exact waits. */
export const CLOCK_START = 1_700_000_000_000

/** Guards `advance()` against a timer that keeps re-arming itself for "now". */
const MAX_FIRES_PER_ADVANCE = 100_000

/**
 * A `Clock` that only moves when told to. `advance(ms)` fires every timer
 * that falls due within the step, earliest first (ties in the order they
 * were set), with `now()` reading each timer's own due time while it runs,
 * so timers set from a callback fire too when they fall within the step.
 */
export class ManualClock implements Clock {
  /** Every `setTimer` request's `ms`, in order. */
  readonly requested: number[] = []
  private time: number
  private nextId = 0
  private readonly timers = new Set<ManualTimer>()

  constructor (start = CLOCK_START) {
    this.time = start
  }

  now (): number {
    return this.time
  }

  setTimer (callback: () => void, ms: number): unknown {
    const timer: ManualTimer = { id: this.nextId++, at: this.time + Math.max(0, ms), ms, callback }
    this.timers.add(timer)
    this.requested.push(ms)
    return timer
  }

  clearTimer (timer: unknown): void {
    this.timers.delete(timer as ManualTimer)
  }

  advance (ms: number): void {
    const end = this.time + ms
    for (let fired = 0; ; fired++) {
      if (fired >= MAX_FIRES_PER_ADVANCE) throw new Error('ManualClock: timers keep firing; a timer re-arms itself without end')
      const due = this.earliest(end)
      if (due === undefined) break
      this.timers.delete(due)
      this.time = due.at
      due.callback()
    }
    this.time = end
  }

  /** The `ms` of the timers not yet fired or cleared, in the order they were set. */
  pending (): number[] {
    return [...this.timers].sort((a, b) => a.id - b.id).map((timer) => timer.ms)
  }

  hasPending (ms: number): boolean {
    for (const timer of this.timers) if (timer.ms === ms) return true
    return false
  }

  private earliest (end: number): ManualTimer | undefined {
    let best: ManualTimer | undefined
    for (const timer of this.timers) {
      if (timer.at > end) continue
      if (best === undefined || timer.at < best.at || (timer.at === best.at && timer.id < best.id)) best = timer
    }
    return best
  }
}

/**
 * Waits in real time (polling, bounded) until `condition` holds: the
 * sockets keep working while the manual clock stands still.
 */
export async function until (condition: () => boolean, what: string, limitMs = 20_000): Promise<void> {
  const deadline = Date.now() + limitMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`)
    await sleep(2)
  }
}

/** Waits until a timer of exactly `ms` is pending on `clock`. */
export function untilTimer (clock: ManualClock, ms: number, limitMs?: number): Promise<void> {
  return until(() => clock.hasPending(ms), `a ${ms} ms timer (pending: ${clock.pending().join(', ') || 'none'})`, limitMs)
}

export interface ClockedClientOptions extends ClientOptions {
  baseUrl: NonNullable<ClientOptions['baseUrl']>
  name?: string
  logger?: Logger
}

/** An `HttpClient` whose waits, timeouts, breaker and budget read the given clock and random source. */
export function clockedClient (options: ClockedClientOptions, clock: Clock, random: RandomSource = Math.random): HttpClient {
  const { name = 'upstream', logger = silentLogger, ...clientOptions } = options
  return HttpClient.create(resolveClientOptions(name, clientOptions, ''), logger, { clock, random })
}
