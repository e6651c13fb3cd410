import type { CircuitBreaker } from '../policies/circuit-breaker'
import type { Clock } from '../clock'
import type { Counters } from '../api/stats'
import type { ClientEvents } from '../telemetry/events'
import { hedgeAfterPoll, LatencyTracker } from './hedging'
import type { Logger } from '../logger'
import type { PreparedRequest } from './prepare'
import type { RateLimiter } from '../policies/rate-limit'
import type { RetryBudget } from '../policies/retry-budget'
import type { TimedEntry, TimerHeap } from './timer-heap'

/**
 * When a call hedges: its hedge timer is armed beside each attempt it
 * sends, and when the delay passes without an answer, a hedge goes out if
 * the circuit is closed and the budget allows it.
 */

/** What hedging needs of the client. */
export interface HedgeHost {
  /** Made on the first call hedged with `'auto'` (the client's option or a call's own). */
  latency: LatencyTracker | null
  readonly timers: TimerHeap
  readonly clock: Clock
  readonly breaker: CircuitBreaker | null
  readonly budget: RetryBudget | null
  readonly rateLimit: RateLimiter | null
  readonly counters: Counters
  readonly events: ClientEvents
  readonly draining: boolean
  readonly closed: boolean
  breakerLog: Logger
  readonly log: Logger
}

/** What hedging needs of the call: the call is its own hedge-timer entry. */
export interface Hedged extends TimedEntry {
  readonly host: HedgeHost
  readonly request: PreparedRequest
  readonly clientName: string
  readonly method: string
  readonly path: string
  readonly startedAt: number
  readonly endsAt: number
  readonly attempts: number
  hedgesSent: number
  /** Running, with an attempt out and no answer yet. */
  readonly awaitingAnswer: boolean
  sendHedgeAttempt(now: number): void
  log(): Logger
}

/** Arms the call's hedge timer, unless it has one, has used its hedges, or may not hedge. */
export function armHedge (call: Hedged, now: number): void {
  const hedge = call.request.hedge
  if (hedge === false || call.timerIndex >= 0 || call.hedgesSent >= hedge.maxHedges || !call.request.replayable) return
  // A call's own 'auto' on a client that does not hedge by 'auto' starts the client's sampling.
  const delay = hedge.delayMs === 'auto' ? (call.host.latency ??= new LatencyTracker()).p95 : hedge.delayMs
  if (delay === Infinity) return
  const at = now + delay
  if (at < call.endsAt) call.host.timers.add(call, at)
}

/** The hedge delay passed: the hedge goes out once the sockets have been read (hedging.ts says why). */
export function hedgeDue (call: Hedged & { sendHedge(): void }): void {
  if (call.awaitingAnswer) hedgeAfterPoll(call)
}

/** Sends the hedge, unless the call was answered (or ended) in the meantime. */
export function sendHedge (call: Hedged): void {
  const host = call.host
  if (!call.awaitingAnswer || host.draining || host.closed) return
  const now = host.clock.now()
  // Armed only before the call's end (armHedge) and sent in the same turn of the event loop: a hedge is cut with its call.
  if (host.breaker !== null) {
    host.breakerLog = call.log()
    const state = host.breaker.state(now)
    host.breakerLog = host.log
    if (state !== 'closed') return
  }
  if (host.budget !== null && !host.budget.tryAcquire(now)) return
  // A hedge is for a slow answer now: it never waits in line for a token.
  if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
    host.budget?.refund(now, now)
    return
  }
  call.hedgesSent++
  host.counters.hedges++
  const delayMs = Math.round(now - call.startedAt)
  host.events.hedge({ client: call.clientName, method: call.method, path: call.path, attempt: call.attempts + 1, delayMs }, call.log())
  call.sendHedgeAttempt(now)
}
