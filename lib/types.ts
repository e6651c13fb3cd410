import type { Readable } from 'node:stream'
import type { Dispatcher, Pool } from 'undici'
import type { Logger } from './logger'

/** Jitter applied to exponential backoff waits. */
export type Jitter = 'full' | 'none'

export interface RetryBudgetOptions {
  /**
   * Retries allowed as a share of the calls of the last 10 seconds.
   * @default 0.2
   */
  ratio?: number
  /**
   * Retries allowed per second on top of the ratio (so a quiet client can still retry).
   * @default 10
   */
  minPerSecond?: number
}

export interface RetryOptions {
  /**
   * Attempts in all: 1 try + retries. `1` means no retry.
   * @default 3
   */
  maxAttempts?: number
  /**
   * First wait, in ms; doubles on each retry.
   * @default 200
   */
  backoffInitialMs?: number
  /**
   * Cap on one backoff wait, in ms (`Retry-After` is not capped).
   * @default 10000
   */
  backoffMaxMs?: number
  /**
   * `'full'`: a random wait up to the exponential value; `'none'`: exactly the exponential value.
   * @default 'full'
   */
  jitter?: Jitter
  /**
   * Response statuses that are retried.
   * @default [408, 429, 500, 502, 503, 504]
   */
  statusCodes?: readonly number[]
  /**
   * Honour `Retry-After` (seconds or HTTP-date) on 429 and 503.
   * @default true
   */
  respectRetryAfter?: boolean
  /**
   * Also retry POST/PATCH on every transient failure.
   * @default false
   */
  retryNonIdempotent?: boolean
  /**
   * Client-wide cap on retries; `false` turns it off.
   * @default { ratio: 0.2, minPerSecond: 10 }
   */
  budget?: RetryBudgetOptions | false
}

export interface CircuitBreakerOptions {
  /**
   * Consecutive failed attempts that open the circuit.
   * @default 5
   */
  failureThreshold?: number
  /**
   * How long the circuit stays open before half-opening, in ms.
   * @default 30000
   */
  recoveryMs?: number
  /**
   * Calls let through at once while half-open.
   * @default 1
   */
  halfOpenMaxProbes?: number
}

/** A header value as callers may give it; `undefined` leaves the header out. */
export type HeaderValue = string | number | readonly string[] | undefined

export type Headers = Record<string, HeaderValue>

export interface ClientOptions {
  /** `http:` or `https:` origin with an optional base path, e.g. `https://payments.internal/v1`. */
  baseUrl?: string
  /**
   * Milliseconds for one attempt: connect, headers and body.
   * @default 10000
   */
  timeout?: number
  /**
   * Milliseconds for the whole call: every attempt and every wait between them.
   * @default 30000
   */
  totalTimeout?: number
  /**
   * Sent on every call; a call's own headers win (names compared without case).
   * @default {}
   */
  defaultHeaders?: Headers
  /**
   * Forward the current inbound request's id.
   * @default true
   */
  propagateRequestId?: boolean
  /** Retry settings, or `false` for none. */
  retry?: RetryOptions | false
  /** Circuit breaker settings, or `false` for none. */
  circuitBreaker?: CircuitBreakerOptions | false
  /**
   * undici `Pool` options; `connections` defaults to 128 rather than unlimited.
   */
  pool?: Pool.Options
  /** Larger response bodies fail with `ResponseTooLargeError`. Unlimited when left out. */
  maxResponseBytes?: number
  /** An undici dispatcher to send through instead of an own `Pool` (e.g. a `MockAgent`). It is never closed by the client. */
  dispatcher?: Dispatcher
}

export interface PluginOptions {
  /** The clients to create, by name. Names are JavaScript identifiers. */
  clients: Record<string, ClientOptions>
  /** Merged (deeply) under each client's own options. */
  defaults?: ClientOptions
  /**
   * Header that carries the request id: inbound, on the reply and outbound.
   * @default 'x-request-id'
   */
  requestIdHeader?: string
  /**
   * Set the request id header on every reply.
   * @default true
   */
  echoRequestId?: boolean
  /**
   * Further inbound headers to forward on outbound calls, e.g. `['traceparent']`.
   * @default []
   */
  propagateHeaders?: readonly string[]
}

/** Options of `createHttpClient()`. */
export interface CreateHttpClientOptions extends ClientOptions {
  baseUrl: string
  /** Shown in errors, logs and diagnostics. */
  name: string
  /** A pino-compatible logger; silent when left out. */
  logger?: Logger
}

/** A request body: a string, bytes, or a readable stream (sent once, never replayed). */
export type RequestBody = string | Buffer | Uint8Array | Readable | AsyncIterable<Uint8Array>

export type QueryValue = string | number | boolean | null | undefined
export type Query = Record<string, QueryValue | readonly QueryValue[]>

export interface CallOptions {
  /** Query parameters; arrays repeat the key, `undefined` leaves it out. */
  query?: Query
  headers?: Headers
  /** Sent as JSON with `content-type: application/json`. */
  json?: unknown
  body?: RequestBody
  /** Aborting rejects the call with the signal's reason. */
  signal?: AbortSignal
  /** Overrides the client's `timeout`. */
  timeout?: number
  /** Overrides the client's `totalTimeout`. */
  totalTimeout?: number
  /** Overrides part of the client's retry settings, or `false` for no retry. */
  retry?: RetryOptions | false
  /** Sent as `Idempotency-Key` on every attempt; `true` generates one. Makes POST/PATCH retryable. */
  idempotencyKey?: string | true
  /** Overrides part of the client's hedging, or `false` for none (GET, HEAD and OPTIONS only). */
  hedge?: HedgeOptions | false
  /** `false`: this call ignores the inbound request's deadline. */
  deadline?: false
}

export interface HedgeOptions {
  /** ms without response headers before a hedge is sent; `'auto'`: the client's recent p95. @default 'auto' */
  delayMs?: number | 'auto'
  /** Hedges per call, 1 to 3. @default 1 */
  maxHedges?: number
}

export interface RequestOptions extends CallOptions {
  method: string
  path: string
}
