// Prints what happens, as it happens: the clients' retries, hedges, circuit
// transitions, replica ejections, stream resumes and idle timeouts, and
// rate-limit pauses come from the package's diagnostics channels.
import diagnosticsChannel from 'node:diagnostics_channel'
import { CHANNELS, type CircuitEvent, type RateLimitedEvent, type RateLimitPausedEvent, type RetryEvent, type RetrySkippedEvent, type StreamIdleTimeoutEvent, type StreamResumedEvent } from 'fastify-resilient-http'

let started: number | undefined

/** One line of the timeline: seconds since the first line, who speaks, what happened. */
export function log (who: string, text: string): void {
  started ??= performance.now()
  const at = ((performance.now() - started) / 1000).toFixed(3).padStart(6)
  console.log(`+${at}s  ${who.padEnd(9)}  ${text}`)
}

export function heading (text: string): void {
  console.log(`\n--- ${text}`)
}

const SKIPPED: Record<RetrySkippedEvent['skipped'], string> = {
  method: 'the method is not idempotent',
  budget: 'the retry budget is spent',
  deadline: 'the wait would pass the deadline or totalTimeout',
  circuit: 'the circuit is open',
  attempts: 'attempts used up',
  'stream-body': 'a stream body cannot be replayed',
  closing: 'the app is closing',
  'rate-limited': 'no rate-limit token in time'
}

// The payloads of the hedge, replica and deadline channels (see CHANNELS).
interface HedgeMessage { client: string, method: string, path: string, attempt: number, delayMs: number }
interface ReplicaMessage { client: string, origin: string, ejected: boolean, ejectionMs: number, ejections: number }
interface DeadlineMessage { client: string, method: string, path: string, attempts: number }

function onRetry (message: unknown): void {
  const event = message as RetryEvent
  log(event.client, `  retry: ${event.method} ${event.path} attempt ${event.attempt} failed (${event.reason}), retry in ${event.waitMs} ms`)
}

function onRetrySkipped (message: unknown): void {
  const event = message as RetrySkippedEvent
  log(event.client, `  no retry: ${event.method} ${event.path} attempt ${event.attempt} failed (${event.reason}), ${SKIPPED[event.skipped]}`)
}

function onCircuit (message: unknown): void {
  const event = message as CircuitEvent
  const until = event.to === 'open' ? ` (half-opens in ${event.remainingMs} ms${event.cause === 'retry-after' ? ', as Retry-After asked' : ''})` : ''
  log(event.client, `  circuit ${event.from} -> ${event.to}${until}`)
}

function onResumed (message: unknown): void {
  const event = message as StreamResumedEvent
  log(event.client, `  resume: ${event.method} ${event.path} after event ${event.lastEventId}, in ${event.waitMs} ms`)
}

function onIdle (message: unknown): void {
  const event = message as StreamIdleTimeoutEvent
  log(event.client, `  idle: ${event.method} ${event.path} sent nothing for ${event.idleTimeoutMs} ms, the connection is cut`)
}

function onRateLimitPaused (message: unknown): void {
  const event = message as RateLimitPausedEvent
  log(event.client, `  rate limit paused for ${event.pausedMs} ms (${event.reason}): calls wait for their turn, nothing is sent`)
}

function onRateLimited (message: unknown): void {
  const event = message as RateLimitedEvent
  log(event.client, `  rate limited: ${event.method} ${event.path} refused, the next token comes in ${event.retryAfterMs} ms`)
}

function onHedge (message: unknown): void {
  const event = message as HedgeMessage
  log(event.client, `  hedge: ${event.method} ${event.path} no answer after ${event.delayMs} ms, attempt ${event.attempt} goes to another replica`)
}

const originNames = new Map<string, string>()

/** Replica events name the replica (`catalog-b`) rather than its origin. */
export function nameOrigins (origins: string[], names: string[]): void {
  for (const [i, origin] of origins.entries()) originNames.set(new URL(origin).origin, names[i])
}

function onReplica (message: unknown): void {
  const event = message as ReplicaMessage
  const name = originNames.get(event.origin) ?? event.origin
  log(event.client, event.ejected
    ? `  replica ${name} ejected for ${event.ejectionMs} ms (ejection ${event.ejections})`
    : `  replica ${name} serves again`)
}

function onDeadline (message: unknown): void {
  const event = message as DeadlineMessage
  log(event.client, `  deadline: ${event.method} ${event.path} cut when the caller's budget ran out (after ${event.attempts} attempt(s))`)
}

const LISTENERS: Array<[string, (message: unknown) => void]> = [
  [CHANNELS.retry, onRetry],
  [CHANNELS.retrySkipped, onRetrySkipped],
  [CHANNELS.circuit, onCircuit],
  [CHANNELS.hedge, onHedge],
  [CHANNELS.streamResumed, onResumed],
  [CHANNELS.streamIdleTimeout, onIdle],
  [CHANNELS.rateLimitPaused, onRateLimitPaused],
  [CHANNELS.rateLimited, onRateLimited],
  [CHANNELS.replica, onReplica],
  [CHANNELS.deadlineExceeded, onDeadline]
]

/** Prints every client event until the returned function is called. */
export function watchClientEvents (): () => void {
  for (const [channel, listener] of LISTENERS) diagnosticsChannel.subscribe(channel, listener)
  return () => {
    for (const [channel, listener] of LISTENERS) diagnosticsChannel.unsubscribe(channel, listener)
  }
}
