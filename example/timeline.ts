// Prints what happens, as it happens: the clients' retries and circuit
// transitions come from the package's diagnostics channels.
import diagnosticsChannel from 'node:diagnostics_channel'
import { CHANNELS, type CircuitEvent, type RetryEvent, type RetrySkippedEvent } from 'fastify-resilient-http'

let started: number | undefined

/** One line of the timeline: seconds since the first line, who speaks, what happened. */
export function log (who: string, text: string): void {
  started ??= performance.now()
  const at = ((performance.now() - started) / 1000).toFixed(3).padStart(6)
  console.log(`+${at}s  ${who.padEnd(8)}  ${text}`)
}

export function heading (text: string): void {
  console.log(`\n--- ${text}`)
}

const SKIPPED: Record<RetrySkippedEvent['skipped'], string> = {
  method: 'the method is not idempotent',
  budget: 'the retry budget is spent',
  deadline: 'the wait would pass totalTimeout',
  circuit: 'the circuit is open',
  attempts: 'attempts used up',
  'stream-body': 'a stream body cannot be replayed'
}

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
  const until = event.to === 'open' ? ` (half-opens in ${event.remainingMs} ms)` : ''
  log(event.client, `  circuit ${event.from} -> ${event.to}${until}`)
}

/** Prints every client event until the returned function is called. */
export function watchClientEvents (): () => void {
  diagnosticsChannel.subscribe(CHANNELS.retry, onRetry)
  diagnosticsChannel.subscribe(CHANNELS.retrySkipped, onRetrySkipped)
  diagnosticsChannel.subscribe(CHANNELS.circuit, onCircuit)
  return () => {
    diagnosticsChannel.unsubscribe(CHANNELS.retry, onRetry)
    diagnosticsChannel.unsubscribe(CHANNELS.retrySkipped, onRetrySkipped)
    diagnosticsChannel.unsubscribe(CHANNELS.circuit, onCircuit)
  }
}
