/**
 * Every error the client raises. Each has a stable `code` (`FRH_*`) and names
 * the client; call errors also name the method and path.
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
  readonly code: string
  /** The client that raised the error (absent for plugin-level option errors). */
  readonly clientName: string | undefined
  readonly method: string | undefined
  readonly path: string | undefined
  /** Attempts made before the error, where the error ends a call. */
  readonly attempts: number | undefined

  constructor (code: string, message: string, details: CallDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.code = code
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

function describeCall (details: CallDetails): string {
  return details.method === undefined ? `${details.clientName}` : `${details.clientName}: ${details.method} ${details.path}`
}

/** The circuit is open: nothing was sent. */
export class CircuitOpenError extends HttpClientError {
  /** Milliseconds until the circuit half-opens (0 when half-open and its probes are busy). */
  readonly remainingMs: number

  constructor (details: CallDetails, remainingMs: number) {
    super('FRH_CIRCUIT_OPEN', `${describeCall(details)} refused: circuit open, half-opens in ${remainingMs} ms`, details)
    this.remainingMs = remainingMs
  }
}

/** Which timeout fired. */
export type TimeoutKind = 'attempt' | 'total' | 'deadline'

/** An attempt (`timeout`) or the whole call (`totalTimeout`) took too long. */
export class TimeoutError extends HttpClientError {
  readonly kind: TimeoutKind
  /** The timeout that fired, in milliseconds. */
  readonly timeoutMs: number

  constructor (details: CallDetails, kind: TimeoutKind, timeoutMs: number) {
    const which = kind === 'attempt' ? 'attempt timeout' : 'total timeout'
    super('FRH_TIMEOUT', `${describeCall(details)} timed out: ${which} of ${timeoutMs} ms (attempt ${details.attempts})`, details)
    this.kind = kind
    this.timeoutMs = timeoutMs
  }
}

/** A transport failure (refused, reset, DNS, ...) once retries are over; `cause` is undici's error. */
export class UpstreamError extends HttpClientError {
  constructor (details: CallDetails) {
    const reason = details.cause instanceof Error ? details.cause.message : String(details.cause)
    super('FRH_UPSTREAM', `${describeCall(details)} failed after ${details.attempts} attempt(s): ${reason}`, details)
  }
}

/** `raiseForStatus()` on a non-2xx response. */
export class HttpStatusError extends HttpClientError {
  readonly statusCode: number
  /** The first KiB of the response body, as text. */
  readonly body: string

  constructor (details: CallDetails, statusCode: number, body: string, readonly response?: unknown) {
    const quoted = body.length === 0 ? '' : `: ${body.length > 200 ? body.slice(0, 200) + '…' : body}`
    super('FRH_HTTP_STATUS', `${describeCall(details)} answered ${statusCode}${quoted}`, details)
    this.statusCode = statusCode
    this.body = body
  }
}

/** A path, header or body that cannot be sent; nothing was sent. */
export class InvalidRequestError extends HttpClientError {
  constructor (details: CallDetails, reason: string) {
    super('FRH_INVALID_REQUEST', `${describeCall(details)} refused: ${reason}`, details)
  }
}

/** A response body larger than `maxResponseBytes`. */
export class ResponseTooLargeError extends HttpClientError {
  readonly limit: number

  constructor (details: CallDetails, limit: number) {
    super('FRH_RESPONSE_TOO_LARGE', `${describeCall(details)} response body exceeds maxResponseBytes (${limit})`, details)
    this.limit = limit
  }
}

/** A call after `close()`, or a wait between retries cut by `close()`. */
export class ClientClosedError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_CLIENT_CLOSED', `${describeCall(details)} refused: client is closed`, details)
  }
}

/** Bad options at registration; `option` is the dotted path of the culprit. */
export class InvalidOptionsError extends HttpClientError {
  readonly option: string

  constructor (option: string, reason: string, clientName?: string) {
    super('FRH_INVALID_OPTIONS', `Invalid option ${option}${clientName === undefined ? '' : ` of client "${clientName}"`}: ${reason}`, { clientName })
    this.option = option
  }
}

/** Over `maxInFlight` or the adaptive limit: nothing was sent. */
export class OverloadedError extends HttpClientError {
  readonly limit: number

  constructor (details: CallDetails, limit: number) {
    super('FRH_OVERLOADED', `${describeCall(details)} refused: ${limit} calls already under way`, details)
    this.limit = limit
  }
}
