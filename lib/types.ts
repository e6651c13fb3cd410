import type { Readable } from 'node:stream'
import type { Pool } from 'undici'
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
  /**
   * A 429 or 503 carrying a valid `Retry-After` opens the circuit until that
   * moment (at most `10 × recoveryMs`), whatever the failure count.
   * @default true
   */
  openOnRetryAfter?: boolean
  /**
   * Also open when, among the attempts judged in the last `samplingMs` (at
   * least `minimumThroughput` of them), this share failed: more than 0, up
   * to 1. No ratio rule when left out.
   */
  failureRatio?: number
  /**
   * An attempt whose response headers take longer than this (ms, from the
   * moment it is routed) is slow, whatever its status; an attempt that fails
   * without headers after this long is slow too. With `slowCallRatio`, the
   * circuit opens when that share of the judged attempts in the window was
   * slow. No slow-call rule when left out.
   */
  slowCallMs?: number
  /**
   * The share of slow attempts in the window that opens the circuit (more
   * than 0, up to 1); only with `slowCallMs`.
   * @default 0.5
   */
  slowCallRatio?: number
  /**
   * Attempts judged in the window before a ratio can open the circuit.
   * @default 20
   */
  minimumThroughput?: number
  /**
   * The window of the ratio rules, in ms (kept in ten buckets).
   * @default 10000
   */
  samplingMs?: number
  /**
   * Each failed probe doubles the next open time (± 25 % at random), up to
   * this (ms); a close resets it to `recoveryMs`. At least `recoveryMs`.
   * @default recoveryMs
   */
  recoveryMaxMs?: number
}

export interface HedgeOptions {
  /**
   * Milliseconds without response headers before a hedge is sent; `'auto'`:
   * the 95th percentile of this client's last 1,000 attempts, and no hedge
   * until 100 attempts have been seen.
   * @default 'auto'
   */
  delayMs?: number | 'auto'
  /**
   * Hedges per call, 1 to 3.
   * @default 1
   */
  maxHedges?: number
}

export interface AdaptiveConcurrencyOptions {
  /**
   * The limit on calls in flight to start from.
   * @default 20 (or `max` when that is smaller)
   */
  initial?: number
  /**
   * The lowest the limit goes.
   * @default 1
   */
  min?: number
  /**
   * The highest the limit goes.
   * @default maxInFlight, or 1000 when maxInFlight is false
   */
  max?: number
}

export interface OutlierDetectionOptions {
  /**
   * Failed attempts in a row that eject a replica.
   * @default 5
   */
  consecutiveFailures?: number
  /**
   * Ejection time, multiplied by the number of times the replica was ejected (at most 300 s).
   * @default 30000
   */
  baseEjectionMs?: number
  /**
   * Most replicas out at once, in percent (never all of them).
   * @default 50
   */
  maxEjectedPercent?: number
}

export interface DeadlineOptions {
  /**
   * Header that carries the caller's remaining budget in ms, read inbound and forwarded outbound.
   * @default 'x-request-timeout-ms'
   */
  header?: string
  /**
   * Send the ms left on every outbound attempt, in `header`.
   * @default true
   */
  forward?: boolean
}

/**
 * The slice of an `ioredis` client a fleet's rate limit uses (any client with
 * the same `eval`/`evalsha` will do). The client is the app's: it is never
 * connected or closed by the limit.
 */
export interface RedisLike {
  eval (script: string, numKeys: number, ...args: Array<string | number>): Promise<unknown>
  evalsha (sha: string, numKeys: number, ...args: Array<string | number>): Promise<unknown>
}

export interface RateLimitOptions {
  /** Attempts per second this client may send (with `redis`: the whole fleet together). */
  perSecond: number
  /**
   * Attempts that may go at once after a quiet spell: the bucket's size.
   * @default perSecond
   */
  burst?: number
  /**
   * How long a call may wait for its turn, in ms; `0`: never wait.
   * @default 1000
   */
  maxWaitMs?: number
  /**
   * An `ioredis` client (the app's own, already connected): the limit is
   * shared by every instance that uses the same `key`.
   * @default undefined (this instance's own limit, in memory)
   */
  redis?: RedisLike
  /**
   * The Redis key of the shared limit (with `redis`).
   * @default 'frh:rate:<client name>'
   */
  key?: string
  /**
   * Tokens an instance takes from Redis at once, to save round trips (with `redis`).
   * @default max(1, floor(perSecond / 50)), at most burst
   */
  lease?: number
  /**
   * A Redis command not answered in this many ms counts as Redis unreachable (with `redis`).
   * @default 100
   */
  redisTimeoutMs?: number
  /**
   * Redis unreachable: `'local'` keeps a limit of `localPerSecond` in this
   * instance; `'refuse'` refuses the calls (with `redis`).
   * @default 'local'
   */
  onRedisError?: 'local' | 'refuse'
  /**
   * The limit of this one instance while Redis is unreachable (with `redis`).
   * @default perSecond
   */
  localPerSecond?: number
}

/**
 * What a client sends through: any undici `Dispatcher` (undici 7 or 8: an
 * `Agent`, `Pool`, `MockAgent`, ...). Only `dispatch()` is used, with
 * undici's handler API.
 */
export interface DispatcherLike {
  dispatch (options: any, handler: any): boolean
}

/** `http:` or `https:` origin with an optional base path. */
export type BaseUrlValue = string | URL

/** A header value as callers may give it; `undefined` leaves the header out. */
export type HeaderValue = string | number | readonly string[] | undefined

export type Headers = Record<string, HeaderValue>

/**
 * Default headers: like `Headers`, but an `undefined` value (an unset
 * environment variable) fails registration instead of leaving the header out.
 */
export type DefaultHeaders = Record<string, HeaderValue>

export interface ClientOptions {
  /**
   * `http:` or `https:` origin with an optional base path, e.g.
   * `https://payments.internal/v1` (a string or a `URL`); or an array of them:
   * replicas of one service, each with the same base path.
   */
  baseUrl?: BaseUrlValue | readonly BaseUrlValue[]
  /**
   * Milliseconds for one attempt: waiting for a connection, connecting, headers
   * and body. Must not be larger than `totalTimeout`.
   * @default 10000, or totalTimeout when that is smaller
   */
  timeout?: number
  /**
   * Milliseconds for the whole call: every attempt and every wait between them.
   * @default 30000
   */
  totalTimeout?: number
  /**
   * Sent on every call; a call's own headers win (names compared without case).
   * Each value a string (or an array of strings); `undefined` fails registration.
   * @default {}
   */
  defaultHeaders?: DefaultHeaders
  /**
   * Forward the current inbound request's id.
   * @default true
   */
  propagateRequestId?: boolean
  /**
   * Retry settings, or `false` for none.
   * @default { maxAttempts: 3, backoffInitialMs: 200, backoffMaxMs: 10000, jitter: 'full', ... }
   */
  retry?: RetryOptions | false
  /**
   * Circuit breaker settings, or `false` for none.
   * @default { failureThreshold: 5, recoveryMs: 30000, halfOpenMaxProbes: 1, openOnRetryAfter: true }
   */
  circuitBreaker?: CircuitBreakerOptions | false
  /**
   * undici `Pool` options; an unknown key is refused.
   * @default { connections: 128 }
   */
  pool?: Pool.Options
  /**
   * Larger response bodies fail with `ResponseTooLargeError`.
   * @default undefined (unlimited)
   */
  maxResponseBytes?: number
  /**
   * An undici dispatcher (7 or 8) to send through instead of an own `Pool`,
   * e.g. a `MockAgent`. It is never closed by the client.
   * @default undefined (an own Pool per replica)
   */
  dispatcher?: DispatcherLike
  /**
   * A second attempt for a slow GET, HEAD or OPTIONS; `false` for none.
   * @default false
   */
  hedge?: HedgeOptions | false
  /**
   * Calls under way at once; one more rejects at once with `OverloadedError`.
   * `false` for no limit.
   * @default 1000
   */
  maxInFlight?: number | false
  /**
   * An AIMD limit on calls in flight that follows the upstream's health;
   * `true` for the defaults.
   * @default false
   */
  adaptiveConcurrency?: boolean | AdaptiveConcurrencyOptions
  /**
   * Per-replica ejection; only with several `baseUrl`s, where it is on by default.
   * @default { consecutiveFailures: 5, baseEjectionMs: 30000, maxEjectedPercent: 50 } with replicas
   */
  outlierDetection?: OutlierDetectionOptions | false
  /**
   * Redirects (301, 302, 303, 307, 308) a call follows, when their
   * `Location` stays on the client's origin and under its base path.
   * @default 0
   */
  followRedirects?: number
  /**
   * The `authorization` of every call (a call's own header wins): a bearer
   * token, a user name and password (Basic, UTF-8), or a function that
   * returns a bearer token, called before the first call and again after a 401.
   * @default undefined (none)
   */
  auth?: AuthOptions
  /**
   * Milliseconds a stream (`client.stream()`) may go without a byte of its
   * body once open; it then fails with `TimeoutError` `kind: 'idle'`.
   * @default 30000
   */
  idleTimeout?: number
  /**
   * Attempts per second to this upstream, for this instance or, with
   * `redis`, for the whole fleet; `false` for no limit.
   * @default false
   */
  rateLimit?: RateLimitOptions | false
}

/** A fixed bearer token: `authorization: Bearer <bearer>`. */
export interface BearerAuth {
  bearer: string
}

/** HTTP Basic authentication, encoded as UTF-8. */
export interface BasicAuth {
  username: string
  password: string
}

/**
 * A bearer token from a function: called before the first call and then
 * only after a 401; every call that got a 401 from one token shares one
 * refresh and is sent once more with the new token.
 */
export interface TokenAuth {
  token: () => string | Promise<string>
}

export type AuthOptions = BearerAuth | BasicAuth | TokenAuth

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
  /**
   * Read the caller's remaining time budget from a header and forward what
   * is left on every outbound attempt; `true` for the defaults.
   * @default false
   */
  deadline?: boolean | DeadlineOptions
}

/** Options of `createHttpClient()`. */
export interface CreateHttpClientOptions extends ClientOptions {
  baseUrl: BaseUrlValue | readonly BaseUrlValue[]
  /** Shown in errors, logs and diagnostics. */
  name: string
  /** A pino-compatible logger; silent when left out. */
  logger?: Logger
}

/**
 * A body that is replayed byte for byte on a retry: a string, bytes, a
 * `Blob`/`File` (its `type` is the content type), a `URLSearchParams` (a
 * form) or a `FormData` (multipart, encoded again for each attempt).
 */
export type ReplayableBody = string | Buffer | Uint8Array | ArrayBuffer | Blob | URLSearchParams | FormData

/** A stream body: sent once, never replayed (no retry, hedge, resend or body-keeping redirect). */
export type StreamBody = Readable | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>

/**
 * A request body: a replayable body, a stream (sent once), or a function
 * returning either, called once per attempt so that each attempt (a stream
 * upload's retry included) gets a fresh body.
 */
export type RequestBody = ReplayableBody | StreamBody | (() => ReplayableBody | StreamBody)

/** One value of a form field. */
export type FormValue = string | number | boolean

/** A form: each key's value, or an array of values (the key repeats); `undefined` leaves the key out. */
export type FormFields = Record<string, FormValue | readonly FormValue[] | undefined>

export type QueryValue = string | number | boolean | null | undefined
export type Query = Record<string, QueryValue | readonly QueryValue[]>

export interface CallOptions {
  /** Query parameters; arrays repeat the key, `undefined` leaves it out. */
  query?: Query
  headers?: Headers
  /** Sent as JSON with `content-type: application/json`. At most one of `json`, `form` and `body`. */
  json?: unknown
  /** Sent as `application/x-www-form-urlencoded`. */
  form?: FormFields | URLSearchParams
  /** Sent as given (see `RequestBody`); its content type is set from it unless the call sets `content-type`. */
  body?: RequestBody
  /** Aborting rejects the call with the signal's reason. */
  signal?: AbortSignal
  /**
   * Overrides the client's `timeout`.
   * @default the client's timeout
   */
  timeout?: number
  /**
   * Overrides the client's `totalTimeout`.
   * @default the client's totalTimeout
   */
  totalTimeout?: number
  /**
   * Overrides part of the client's retry settings, or `false` for no retry.
   * @default the client's retry
   */
  retry?: RetryOptions | false
  /**
   * Sent as `Idempotency-Key` on every attempt; `true` generates one. Makes POST/PATCH retryable.
   * @default undefined
   */
  idempotencyKey?: string | true
  /**
   * Overrides part of the client's hedging, or `false` for none (GET, HEAD and OPTIONS only).
   * @default the client's hedge
   */
  hedge?: Partial<HedgeOptions> | false
  /**
   * `false`: this call ignores the inbound request's deadline (work that outlives the request).
   * @default undefined (the deadline applies)
   */
  deadline?: false
  /**
   * Overrides the client's `followRedirects`: how many redirects within the
   * client's origin and base path this call follows.
   * @default the client's followRedirects
   */
  followRedirects?: number
}

/** Resume of an event stream (`events()`): reconnect with `Last-Event-ID` after a failure. */
export interface ResumeOptions {
  /**
   * Failed reconnects in a row that end the stream.
   * @default 5
   */
  maxReconnects?: number
}

/** Options of `client.stream()`: every call option, and how the stream is bounded once open. */
export interface StreamOptions extends CallOptions {
  /**
   * The request's method.
   * @default 'GET'
   */
  method?: string
  /**
   * Milliseconds the stream may go without a byte once open (`TimeoutError` `kind: 'idle'`).
   * @default the client's idleTimeout
   */
  idleTimeout?: number
  /**
   * Milliseconds the stream may stay open from its commit (`TimeoutError` `kind: 'total'`).
   * @default undefined (no bound)
   */
  maxDuration?: number
  /**
   * `events()` only: after a transport failure or an idle timeout, open the
   * stream again with `Last-Event-ID` (once it has seen an event id).
   * `true` for `{ maxReconnects: 5 }`.
   * @default false
   */
  resume?: boolean | ResumeOptions
}

export interface RequestOptions extends CallOptions {
  method: string
  path: string
}
