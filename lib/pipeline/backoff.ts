import type { RandomSource } from '../clock'
import type { ResolvedRetry } from '../options/resolve'

/**
 * The wait before retry number `retry` (1 for the first retry): the
 * exponential value `backoffInitialMs * 2^(retry-1)` capped at `backoffMaxMs`,
 * and with `'full'` jitter a random wait from 0 up to that value.
 */
export function backoffDelay (retry: number, options: ResolvedRetry, random: RandomSource): number {
  const exponential = Math.min(options.backoffMaxMs, options.backoffInitialMs * 2 ** (retry - 1))
  return options.jitter === 'full' ? Math.floor(random() * exponential) : exponential
}

const DELTA_SECONDS = /^\d+$/
// All three HTTP-date forms start with a day name; Date.parse alone would read `-5` or `1.5` as dates.
const HTTP_DATE_START = /^[A-Za-z]{3,9},? /

/**
 * The wait a `Retry-After` value asks for, in ms: delta-seconds or an
 * HTTP-date (RFC 9110, 10.2.3). A date in the past means no wait; `undefined`
 * when the header is absent or unreadable.
 */
export function retryAfterDelay (header: string | string[] | undefined, now: number): number | undefined {
  const value = Array.isArray(header) ? header[0] : header
  if (value === undefined) return undefined
  const trimmed = value.trim()
  if (DELTA_SECONDS.test(trimmed)) return Number(trimmed) * 1000
  if (!HTTP_DATE_START.test(trimmed)) return undefined
  const date = Date.parse(trimmed)
  if (Number.isNaN(date)) return undefined
  return Math.max(0, date - now)
}
