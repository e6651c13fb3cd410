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

/** Every instance of ours carries `[kBrand]`; every class names its own brand on `[kClassBrand]`. */
const kBrand = Symbol.for('fastify-resilient-http.error')
const kClassBrand = Symbol('fastify-resilient-http.class-brand')

/**
 * `instanceof` by brand, as undici's errors do, so it holds across two
 * copies of the package (a nested `node_modules`): each class has its own
 * `Symbol.for` brand, true on its prototype and so on its subclasses'. A
 * class made by an app (extending one of ours) keeps the prototype check.
 */
function hasBrandedInstance (this: object, value: unknown): boolean {
  if (!Object.hasOwn(this, kClassBrand)) return Function.prototype[Symbol.hasInstance].call(this, value)
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[(this as Record<symbol, symbol>)[kClassBrand]] === true
}

/** Gives an error class its own brand (see `hasBrandedInstance`). */
export function brand (ErrorClass: abstract new (...args: never[]) => HttpClientError, name: string): void {
  const symbol = name === 'HttpClientError' ? kBrand : Symbol.for(`fastify-resilient-http.error.${name}`)
  Object.defineProperty(ErrorClass, kClassBrand, { value: symbol })
  Object.defineProperty(ErrorClass.prototype, symbol, { value: true })
}

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

  /** `instanceof` also holds across two copies of this package, for every class. */
  static override [Symbol.hasInstance] (value: unknown): boolean {
    return hasBrandedInstance.call(this, value)
  }
}

brand(HttpClientError, 'HttpClientError')

/**
 * Makes a refusal without a stack trace: refusals come fast and in bulk
 * (open circuit, overload) and a stack says nothing about them.
 */
export function withoutStack<E, X> (ErrorClass: new (details: CallDetails, figure: number, extra?: X) => E, details: CallDetails, figure: number, extra?: X): E {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  const error = new ErrorClass(details, figure, extra)
  Error.stackTraceLimit = limit
  return error
}

/**
 * The reason an attempt is aborted with when nobody needs its answer (a
 * losing hedge, an abandoned body): an `AbortError`, which tracers record as
 * no error, without a stack, which Node reads on every socket destroyed with
 * it and which says nothing here.
 */
export function abortReason (message: string): DOMException {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  const reason = new DOMException(message, 'AbortError')
  Error.stackTraceLimit = limit
  return reason
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
brand(CircuitOpenError, 'CircuitOpenError')

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
brand(OverloadedError, 'OverloadedError')

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
brand(RateLimitedError, 'RateLimitedError')

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
brand(TimeoutError, 'TimeoutError')

/**
 * The kind of a transport failure, by `err.code`, for messages: undici's own
 * messages name addresses (`connect ECONNREFUSED 10.0.0.5:8080`) and a
 * message may reach an app's caller, so they stay on `cause`.
 */
const FAILURE_KINDS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ECONNABORTED: 'connection aborted',
  EPIPE: 'connection closed while sending',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'DNS lookup failed',
  EAI_AGAIN: 'DNS lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  UND_ERR_CONNECT_TIMEOUT: 'connect timeout',
  UND_ERR_SOCKET: 'socket closed',
  UND_ERR_CLOSED: 'connection closed',
  UND_ERR_DESTROYED: 'connection destroyed',
  UND_ERR_HEADERS_TIMEOUT: 'headers timeout',
  UND_ERR_BODY_TIMEOUT: 'body timeout',
  UND_ERR_HEADERS_OVERFLOW: 'response headers too large',
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: 'response body shorter or longer than its content-length',
  UND_ERR_RES_EXCEEDED_MAX_SIZE: 'response body too large',
  UND_ERR_ABORTED: 'request aborted',
  UND_ERR_INFO: 'invalid response',
  UND_ERR_RESPONSE: 'invalid response',
  UND_ERR_INVALID_ARG: 'an invalid header or argument',
  UND_ERR_NOT_SUPPORTED: 'not supported by undici',
  UND_ERR_REQ_CONTENT_LENGTH_MISMATCH: 'request body length does not match its content-length'
}

/** A failure's kind, by its code alone: an unknown code is named (codes are short tokens), never the message. */
export function failureKind (error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return 'transport failure'
  const kind = FAILURE_KINDS[code]
  if (kind !== undefined) return kind
  if (code.startsWith('HPE_')) return 'invalid HTTP response'
  if (code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || code.includes('CERT')) return 'TLS failure'
  return /^[A-Z][A-Z0-9_]{0,40}$/.test(code) ? `transport failure (${code})` : 'transport failure'
}

/**
 * A transport failure (refused, reset, DNS, ...) once retries are over; its
 * message names the kind of failure, `cause` is undici's error (with the
 * address).
 */
export class UpstreamError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_UPSTREAM', `${describeCall(details)} failed after ${details.attempts} attempt(s): ${failureKind(details.cause)}`, details, 502)
  }
}
brand(UpstreamError, 'UpstreamError')

/** A path, header, option or body that cannot be sent; nothing was sent. */
export class InvalidRequestError extends HttpClientError {
  constructor (details: CallDetails, reason: string) {
    super('FRH_INVALID_REQUEST', `${describeCall(details)} refused: ${reason}`, details, 500)
  }
}
brand(InvalidRequestError, 'InvalidRequestError')

/** A response body larger than `maxResponseBytes`. */
export class ResponseTooLargeError extends HttpClientError {
  declare readonly limit: number

  constructor (details: CallDetails, limit: number) {
    super('FRH_RESPONSE_TOO_LARGE', `${describeCall(details)} response body exceeds maxResponseBytes (${limit})`, details, 502)
    this.limit = limit
  }
}
brand(ResponseTooLargeError, 'ResponseTooLargeError')

/**
 * A response body that is not what was asked for: `json()` on a body that is
 * not JSON, or an NDJSON line that is not JSON. The parser's error is on
 * `cause`; the message never quotes the body.
 */
export class InvalidResponseError extends HttpClientError {
  /** The 1-based number of the NDJSON line that failed; `undefined` for a whole body (`json()`). */
  declare readonly line: number | undefined

  constructor (details: CallDetails, line?: number) {
    const what = line === undefined ? 'response body' : `response line ${line}`
    super('FRH_INVALID_RESPONSE', `${describeCall(details)} ${what} is not valid JSON`, details, 502)
    this.line = line
  }
}
brand(InvalidResponseError, 'InvalidResponseError')

/** A call after `close()`, or a wait between retries cut by `close()`. */
export class ClientClosedError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_CLIENT_CLOSED', `${describeCall(details)} refused: client is closed`, details, 503)
  }
}
brand(ClientClosedError, 'ClientClosedError')

/** The `auth.token` function threw or rejected; its error is on `cause`, never in the message. */
export class AuthenticationError extends HttpClientError {
  constructor (details: CallDetails) {
    super('FRH_AUTHENTICATION', `${describeCall(details)} failed: the auth token function threw or rejected`, details, 502)
  }
}
brand(AuthenticationError, 'AuthenticationError')

/** Bad options at registration; `option` is the dotted path of the culprit. */
export class InvalidOptionsError extends HttpClientError {
  declare readonly option: string

  constructor (option: string, reason: string, clientName?: string) {
    super('FRH_INVALID_OPTIONS', `Invalid option ${option}${clientName === undefined ? '' : ` of client "${clientName}"`}: ${reason}`, { clientName }, 500)
    this.option = option
  }
}
brand(InvalidOptionsError, 'InvalidOptionsError')
