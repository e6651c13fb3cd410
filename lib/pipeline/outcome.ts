import { Verdict, type VerdictValue } from '../policies/circuit-breaker'
import type { ResolvedRetry } from '../options/resolve'

/**
 * What an attempt's end means, decided in one place: whether it may be
 * retried, what it says of the upstream's health (the breaker's and the
 * outlier detector's verdict) and whether the upstream dropped it (the
 * adaptive limit's signal).
 */

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

export function errorCode (error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : undefined
}

export function isTransientError (error: unknown): boolean {
  const code = errorCode(error)
  return code !== undefined && TRANSIENT_CODES.has(code)
}

/** True when the failure proves nothing reached the upstream. */
export function neverReachedUpstream (error: unknown): boolean {
  const code = errorCode(error)
  return code !== undefined && TRANSIENT_CODES.get(code) === true
}

export function isRetryStatus (statusCode: number, retry: ResolvedRetry | false): boolean {
  return retry !== false && statusCode >= retry.lowestRetryStatus && retry.statusCodes.includes(statusCode)
}

/** A response's verdict: a 5xx is a failure, anything else a success. */
export function statusVerdict (statusCode: number): VerdictValue {
  return statusCode >= 500 ? Verdict.Failure : Verdict.Success
}

/** An attempt timeout, a refused or reset connection, a 429 or a 503: the upstream is past its capacity. */
export function isDrop (statusCode: number, error: unknown, timedOut: boolean): boolean {
  if (timedOut) return true
  if (statusCode !== 0) return statusCode === 429 || statusCode === 503
  const code = errorCode(error)
  return code !== undefined && DROP_CODES.has(code)
}
