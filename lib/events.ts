import diagnosticsChannel from 'node:diagnostics_channel'
import type { CircuitState } from './circuit-breaker'
import type { Logger } from './logger'

/** Why a retry was not made. */
export type RetrySkipReason = 'method' | 'budget' | 'deadline' | 'circuit' | 'attempts' | 'stream-body'

export interface RetryEvent {
  client: string
  method: string
  path: string
  /** The attempt that failed (1 for the first). */
  attempt: number
  /** What failed: `status 503`, `ECONNRESET`, `timeout`, ... */
  reason: string
  /** How long the client waits before the next attempt, in ms. */
  waitMs: number
}

export interface RetrySkippedEvent {
  client: string
  method: string
  path: string
  attempt: number
  reason: string
  /** Why no retry was made. */
  skipped: RetrySkipReason
}

export interface CircuitEvent {
  client: string
  from: CircuitState
  to: CircuitState
  /** When the circuit opens: ms until it half-opens. */
  remainingMs: number
}

/**
 * The `diagnostics_channel` names the client publishes on; subscribe with
 * `diagnostics_channel.subscribe(name, listener)` for metrics and tracing.
 */
export const CHANNELS = Object.freeze({
  retry: 'fastify-resilient-http:retry',
  retrySkipped: 'fastify-resilient-http:retry-skipped',
  circuit: 'fastify-resilient-http:circuit'
})

const retryChannel = diagnosticsChannel.channel(CHANNELS.retry)
const retrySkippedChannel = diagnosticsChannel.channel(CHANNELS.retrySkipped)
const circuitChannel = diagnosticsChannel.channel(CHANNELS.circuit)

/** Reports a client's retries and breaker transitions to its logger and the diagnostics channels. */
export class ClientEvents {
  constructor (private readonly logger: Logger) {}

  retry (event: RetryEvent): void {
    this.logger.info(event, `retrying ${event.method} ${event.path} in ${event.waitMs} ms after ${event.reason} (attempt ${event.attempt})`)
    if (retryChannel.hasSubscribers) retryChannel.publish(event)
  }

  retrySkipped (event: RetrySkippedEvent): void {
    this.logger.info(event, `not retrying ${event.method} ${event.path} after ${event.reason}: ${event.skipped}`)
    if (retrySkippedChannel.hasSubscribers) retrySkippedChannel.publish(event)
  }

  circuit (event: CircuitEvent): void {
    if (event.to === 'open') {
      this.logger.warn(event, `circuit open for ${event.remainingMs} ms`)
    } else {
      this.logger.info(event, `circuit ${event.to}`)
    }
    if (circuitChannel.hasSubscribers) circuitChannel.publish(event)
  }
}

/**
 * The 1-based number of the attempt being dispatched, set synchronously
 * around every `dispatcher.dispatch()` (0 otherwise): undici publishes
 * `undici:request:create` inside that call, so an instrumentation hook
 * running there can tell a first attempt from a resend.
 */
export const dispatching = { attempt: 0 }
