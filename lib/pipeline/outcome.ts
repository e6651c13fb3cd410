import type { Attempt } from './attempt'
import { Cut } from './attempt-state'
import type { Clock } from '../clock'
import { type CallDetails, failureKind, InvalidRequestError, UpstreamError } from '../errors'
import type { ResolvedBreaker, ResolvedRetry } from '../options/resolve'
import { Verdict, type VerdictValue } from '../policies/circuit-breaker'
import { retryAfterDelay } from './backoff'

/**
 * What an attempt's end means, decided in one place (`classify`): what it
 * says of the upstream's health (the breaker's and the replica set's
 * verdict), whether another attempt may cure it, whether the upstream
 * dropped it (the adaptive limit's signal), the wait its `Retry-After` asks
 * for, whether that opens the circuit, and what the call ends with if it
 * ends here.
 */
export interface Outcome {
  readonly verdict: VerdictValue
  /** A failure another attempt may cure: the retry rules apply. */
  readonly transient: boolean
  /** The upstream could not take the attempt: the adaptive limit shrinks. */
  readonly dropped: boolean
  /** Provably not processed (it never reached the upstream, or a 429): a POST may be sent again. */
  readonly unprocessed: boolean
  /** The wait a trusted `Retry-After` on a 429 or 503 asks for, in ms; `undefined` for none. */
  readonly askedWaitMs: number | undefined
  /** How long this answer opens the circuit for (`openOnRetryAfter`), in ms; 0 for not at all. */
  readonly opensCircuitMs: number
  /** What the call rejects with if it ends on this attempt; `undefined`: it resolves with the response. */
  readonly error: unknown
}

/** Every plain answer: a 2xx, a 404. Shared, so a successful attempt allocates nothing. */
export const SUCCESS: Outcome = Object.freeze({
  verdict: Verdict.Success, transient: false, dropped: false, unprocessed: false, askedWaitMs: undefined, opensCircuitMs: 0, error: undefined
})

/** A 5xx that is not retried and asks for nothing. */
const FAILED_ANSWER: Outcome = Object.freeze({ ...SUCCESS, verdict: Verdict.Failure })

/**
 * Transport failures worth another attempt, by `err.code`. The value says
 * whether the failure proves the request never reached the upstream (no
 * connection was made), which is what makes a POST safe to send again.
 */
const TRANSIENT_CODES = new Map<string, boolean>([
  ['ECONNREFUSED', true],
  ['ENOTFOUND', true],
  ['EAI_AGAIN', true],
  ['EHOSTUNREACH', true],
  ['ENETUNREACH', true],
  ['UND_ERR_CONNECT_TIMEOUT', true],
  ['ECONNRESET', false],
  ['EPIPE', false],
  ['ETIMEDOUT', false],
  ['ECONNABORTED', false],
  ['UND_ERR_SOCKET', false],
  ['UND_ERR_CLOSED', false],
  ['UND_ERR_HEADERS_TIMEOUT', false],
  ['UND_ERR_BODY_TIMEOUT', false]
])

/** Failures that say the upstream could not take the request: the adaptive limit shrinks on them. */
const DROP_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET'])

/** What `classify` reads of the client. */
export interface ClassifyHost {
  readonly breakerSettings: ResolvedBreaker | false
  /** With a rate limit, a 429's `Retry-After` pauses the limit instead of opening the circuit. */
  readonly rateLimit: object | null
  readonly clock: Clock
}

/**
 * The one reading of an attempt's end: its status, its error, how it was
 * cut, and its `Retry-After`, read once. `call` names the call in the
 * error it would end with; `retry` is the call's retry options.
 */
export function classify (attempt: Attempt, call: CallDetails, retry: ResolvedRetry | false, host: ClassifyHost): Outcome {
  const error = attempt.error
  if (error === undefined) return classifyAnswer(attempt, retry, host)
  switch (attempt.cut) {
    case Cut.None: {
      // undici refused the request as given: not the upstream's fault, and no retry cures it.
      if (isRequestFault(error)) return cutShort(new InvalidRequestError(detailsOf(call, error), `the request as given cannot be sent (${failureKind(error)})`))
      const code = errorCode(error)
      const reached = code === undefined ? undefined : TRANSIENT_CODES.get(code)
      return {
        verdict: Verdict.Failure,
        transient: reached !== undefined,
        dropped: code !== undefined && DROP_CODES.has(code),
        unprocessed: reached === true,
        askedWaitMs: undefined,
        opensCircuitMs: 0,
        error: new UpstreamError(detailsOf(call, error))
      }
    }
    case Cut.Timeout:
      // The inbound deadline is the caller's limit, not the upstream's slowness.
      if (attempt.timeoutKind === 'deadline') return cutShort(error)
      return { ...FAILED_ANSWER, transient: attempt.timeoutKind === 'attempt', dropped: true, error }
    default:
      // Cut by us (the caller, close, a winning hedge, the size limit): it says nothing of the upstream.
      return cutShort(error)
  }
}

function classifyAnswer (attempt: Attempt, retry: ResolvedRetry | false, host: ClassifyHost): Outcome {
  const status = attempt.statusCode
  const transient = retry !== false && status >= retry.lowestRetryStatus && retry.statusCodes.includes(status)
  if (status !== 429 && status !== 503) {
    if (!transient) return status >= 500 ? FAILED_ANSWER : SUCCESS
    return { ...(status >= 500 ? FAILED_ANSWER : SUCCESS), transient }
  }
  const asked = askedWait(retry, attempt.headers?.['retry-after'], host.clock)
  const breaker = host.breakerSettings
  const opens = breaker !== false && breaker.openOnRetryAfter && asked !== undefined && asked > 0 && (status === 503 || host.rateLimit === null)
  return {
    verdict: status >= 500 ? Verdict.Failure : Verdict.Success,
    transient,
    dropped: true,
    unprocessed: status === 429,
    askedWaitMs: asked,
    opensCircuitMs: opens ? Math.min(asked, 10 * breaker.recoveryMs) : 0,
    error: undefined
  }
}

/** The wait `Retry-After` asks for, unless the call chose not to trust it. */
function askedWait (retry: ResolvedRetry | false, header: string | string[] | undefined, clock: Clock): number | undefined {
  if (header === undefined || (retry !== false && !retry.respectRetryAfter)) return undefined
  return retryAfterDelay(header, clock.wallNow === undefined ? clock.now() : clock.wallNow())
}

/** Ended by us or by the request itself: no verdict, no retry, this error. */
function cutShort (error: unknown): Outcome {
  return { ...SUCCESS, verdict: Verdict.None, error }
}

function detailsOf (call: CallDetails, cause: unknown): CallDetails {
  return { clientName: call.clientName, method: call.method, path: call.path, attempts: call.attempts, cause }
}

export function errorCode (error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : undefined
}

/** undici refused the request as given (a bad header, a body of the wrong length). */
function isRequestFault (error: unknown): boolean {
  const code = errorCode(error)
  return code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED' || code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'
}

/** A failure's short name for logs: `status 503`, `ECONNRESET`, `timeout`. */
export function describeFailure (attempt: Attempt): string {
  if (attempt.error === undefined) return `status ${attempt.statusCode}`
  if (attempt.cut === Cut.Timeout) return 'timeout'
  // A transient transport failure always has a code: that is how it was found transient.
  return String(errorCode(attempt.error))
}
