import type { ResolvedRetry } from './options'

/** Methods that may be repeated without changing the outcome (RFC 9110, 9.2.2). */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

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
  ['UND_ERR_HEADERS_TIMEOUT', false],
  ['UND_ERR_BODY_TIMEOUT', false]
])

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

export function isRetryStatus (statusCode: number, retry: ResolvedRetry): boolean {
  return statusCode >= retry.lowestRetryStatus && retry.statusCodes.includes(statusCode)
}

/**
 * Whether a transient failure of this call may be retried given its method:
 * idempotent methods always; POST, PATCH and the rest only when the request
 * never reached the upstream, on a 429 (the upstream refused it unprocessed),
 * with an `Idempotency-Key`, or when `retryNonIdempotent` is set.
 */
export function methodAllowsRetry (
  method: string,
  retry: ResolvedRetry,
  hasIdempotencyKey: boolean,
  statusCode: number | undefined,
  error: unknown
): boolean {
  if (IDEMPOTENT_METHODS.has(method) || hasIdempotencyKey || retry.retryNonIdempotent) return true
  if (statusCode !== undefined) return statusCode === 429
  return neverReachedUpstream(error)
}
