/**
 * Every error the client raises. Each has a stable `code` (`FRH_*`), the
 * status a gateway should answer with when it escapes a route handler
 * (`statusCode`), and names the client; call errors also name the method
 * and path. No message ever quotes an upstream body.
 */

/** Where a failing call came from. */
export interface CallDetails {
  clientName: string | undefined
  method?: string | undefined
  path?: string | undefined
  attempts?: number | undefined
  cause?: unknown
}

const kBrand = Symbol.for('fastify-resilient-http.error')

/** Base class of every error raised by fastify-resilient-http. */
export class HttpClientError extends Error {
  /** Stable machine-readable code, `FRH_*`. */
  declare readonly code: string
  /**
   * The status to answer with when this error escapes a route handler
   * (Fastify's error handler reads it): 502, 503 or 504 of our own, or 500,
   * never an upstream's status.
   */
  declare readonly statusCode: number
  /** The client that raised the error (absent for plugin-level option errors). */
  declare readonly clientName: string | undefined
  declare readonly method: string | undefined
  declare readonly path: string | undefined
  /** Attempts made before the error, where the error ends a call. */
  declare readonly attempts: number | undefined
  /** Lines or events a stream had yielded when this error ended its iteration; set only on such errors. */
  declare delivered?: number

  /** `message` undefined: the subclass writes it when it is first read (see `messageOnRead`). */
  constructor (code: string, message: string | undefined, details: CallDetails, statusCode = 500) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.code = code
    this.statusCode = statusCode
    this.clientName = details.clientName
    this.method = details.method
    this.path = details.path
    this.attempts = details.attempts
  }

  override get name (): string {
    return this.constructor.name
  }

  /** `instanceof` also holds across two copies of this package. */
  static override [Symbol.hasInstance] (value: unknown): boolean {
    if (this !== HttpClientError) return Function.prototype[Symbol.hasInstance].call(this, value)
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[kBrand] === true
  }

  get [kBrand] (): boolean {
    return true
  }
}

export function describeCall (details: CallDetails): string {
  return details.method === undefined ? `${details.clientName}` : `${details.clientName}: ${details.method} ${details.path}`
}

/**
 * Refusals come in bulk (one per call while the circuit is open or the limit
 * is reached) and most are never logged: their message is written from the
 * error's fields when first read (`message`, `stack`, `String(error)`), not
 * when the error is made. Assigning `message` still works.
 */
function messageOnRead<E extends HttpClientError> (ErrorClass: abstract new (...args: never[]) => E, write: (error: E) => string): void {
  Object.defineProperty(ErrorClass.prototype, 'message', {
    configurable: true,
    get (this: E): string {
      return write(this)
    },
    set (this: E, value: string) {
      Object.defineProperty(this, 'message', { value, writable: true, configurable: true, enumerable: false })
    }
  })
}

/**
 * The rule that opened the circuit: `failureThreshold` failures in a row,
 * the `failureRatio` or the slow-call ratio over the window, or an
 * upstream's `Retry-After`.
 */
export type CircuitOpenedBy = 'failures' | 'failure-ratio' | 'slow-calls' | 'retry-after'

/** The circuit is open, or half-open with its probes taken: nothing was sent. */
export class CircuitOpenError extends HttpClientError {
  /** Milliseconds until the circuit half-opens (0 when half-open and its probes are taken). */
  declare readonly remainingMs: number
  /**
   * The rule that opened the circuit (a failed probe keeps it open for the
   * same reason). Not `cause`, which stays the standard `Error` cause.
   */
  declare readonly openedBy: CircuitOpenedBy

  constructor (details: CallDetails, remainingMs: number, openedBy: CircuitOpenedBy = 'failures') {
    super('FRH_CIRCUIT_OPEN', undefined, details, 503)
    this.remainingMs = remainingMs
    this.openedBy = openedBy
  }
}

messageOnRead(CircuitOpenError, (error) => {
  const state = error.remainingMs > 0
    ? `circuit open (${error.openedBy}), half-opens in ${error.remainingMs} ms`
    : `circuit half-open and its probes are taken (opened by ${error.openedBy})`
  return `${describeCall(error)} refused: ${state}`
})

/** Over `maxInFlight` or the adaptive concurrency limit: nothing was sent. */
export class OverloadedError extends HttpClientError {
  /** The limit on calls in flight that was reached. */
  declare readonly limit: number

  constructor (details: CallDetails, limit: number) {
    super('FRH_OVERLOADED', undefined, details, 503)
    this.limit = limit
  }
}

messageOnRead(OverloadedError, (error) => `${describeCall(error)} refused: ${error.limit} calls already in flight`)

/** No token within `maxWaitMs`, the total timeout or the deadline (see `rateLimit`): nothing was sent. */
export class RateLimitedError extends HttpClientError {
  /** Milliseconds until a token is expected. */
  declare readonly retryAfterMs: number

  constructor (details: CallDetails, retryAfterMs: number) {
    super('FRH_RATE_LIMITED', undefined, details, 503)
    this.retryAfterMs = retryAfterMs
  }
}

messageOnRead(RateLimitedError, (error) => `${describeCall(error)} refused: rate limited, next token in ${error.retryAfterMs} ms`)

/** Which timeout fired: one attempt's, the call's (or a stream's `maxDuration`), the inbound request's deadline, or a stream's silence. */
export type TimeoutKind = 'attempt' | 'total' | 'deadline' | 'idle'

const TIMEOUT_NAMES: Record<TimeoutKind, string> = {
  attempt: 'attempt timeout',
  total: 'total timeout',
  deadline: 'deadline of the inbound request',
  idle: 'idle timeout'
}

/** An attempt (`timeout`), the whole call (`totalTimeout`) or the inbound request's deadline ran out. */
export class TimeoutError extends HttpClientError {
  declare readonly kind: TimeoutKind
  /** The timeout that fired, in milliseconds (for `'deadline'`, the time the call was given). */
  declare readonly timeoutMs: number

  constructor (details: CallDetails, kind: TimeoutKind, timeoutMs: number) {
    super('FRH_TIMEOUT', `${describeCall(details)} timed out: ${TIMEOUT_NAMES[kind]} of ${timeoutMs} ms (attempt ${details.attempts})`, details, 504)
    this.kind = kind
    this.timeoutMs = timeoutMs
  }
}

/** A transport failure (refused, reset, DNS, ...) once retries are over; `cause` is undici's error. */
export class UpstreamError extends HttpClientError {
  constructor (details: CallDetails) {
    const reason = details.cause instanceof Error ? details.cause.message : String(details.cause)
    super('FRH_UPSTREAM', `${describeCall(details)} failed after ${details.attempts} attempt(s): ${reason}`, details, 502)
  }
}

/** A path, header, option or body that cannot be sent; nothing was sent. */
export class InvalidRequestError extends HttpClientError {
  constructor (details: CallDetails, reason: string) {
    super('FRH_INVALID_REQUEST', `${describeCall(details)} refused: ${reason}`, details, 500)
  }
}

/** A response body larger than `maxResponseBytes`. */
export class ResponseTooLargeError extends HttpClientError {
  declare readonly limit: number

  constructor (details: CallDetails, limit: number) {
    super('FRH_RESPONSE_TOO_LARGE', `${describeCall(details)} response body exceeds maxResponseBytes (${limit})`, details, 502)
    this.limit = limit
  }
}

/** A stream's body broke its format: an NDJSON line that is not JSON. */
export class InvalidResponseError extends HttpClientError {
  /** The 1-based number of the offending line in the body. */
  declare readonly line: number

  constructor (details: CallDetails, line: number, reason: string) {
    super('FRH_INVALID_RESPONSE', `${describeCall(details)} sent an invalid line ${line}: ${reason}`, details, 502)
    this.line = line
  }
}

/** A call after `close()`, or a wait between retries cut by `close()`. */
export class ClientClosedError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_CLIENT_CLOSED', `${describeCall(details)} refused: client is closed`, details, 503)
  }
}

/** The `auth.token` function threw or rejected; its error is on `cause`, never in the message. */
export class AuthenticationError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_AUTHENTICATION', `${describeCall(details)} failed: the auth token function threw or rejected`, details, 502)
  }
}

/** Bad options at registration; `option` is the dotted path of the culprit. */
export class InvalidOptionsError extends HttpClientError {
  declare readonly option: string

  constructor (option: string, reason: string, clientName?: string) {
    super('FRH_INVALID_OPTIONS', `Invalid option ${option}${clientName === undefined ? '' : ` of client "${clientName}"`}: ${reason}`, { clientName }, 500)
    this.option = option
  }
}
