import type { IncomingHttpHeaders } from 'node:http'
import type { PauseReason } from '../policies/rate-limit'

/**
 * The upstream's word on its rate limit, read from an answer's headers: a
 * 429 with `Retry-After` (RFC 9110, 10.2.3), the IETF httpapi draft's
 * `RateLimit: "default";r=0;t=<seconds>`, and the common
 * `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (delta seconds, or
 * epoch seconds when above 10⁹, as GitHub sends it).
 */

/** A reset above this is a moment (epoch seconds), not a delay. */
const EPOCH_SECONDS = 1e9
const SECONDS = /^\d+(?:\.\d+)?$/

/** A pause the upstream asked for: how long, and which header said so. */
export interface AskedPause {
  readonly ms: number
  readonly reason: PauseReason
}

/**
 * The pause the answer asks every caller for, or `null` when it asks none.
 * `retryAfterMs` is what a 429's `Retry-After` asks for, as the attempt's
 * outcome read it (outcome.ts). A plain answer costs two header lookups and
 * allocates nothing.
 */
export function askedPause (retryAfterMs: number | undefined, headers: IncomingHttpHeaders, wallNow: number): AskedPause | null {
  if (retryAfterMs !== undefined && retryAfterMs > 0) return { ms: retryAfterMs, reason: 'retry-after' }
  const draft = headers.ratelimit
  if (draft !== undefined) {
    // Node joins repeated headers it does not know into one string.
    const ms = draftPauseMs(String(draft))
    if (ms > 0) return { ms, reason: 'ratelimit' }
  }
  const remaining = headers['x-ratelimit-remaining']
  if (remaining !== undefined && String(remaining).trim() === '0') {
    const ms = resetMs(headers['x-ratelimit-reset'] as string | undefined, wallNow)
    if (ms > 0) return { ms, reason: 'x-ratelimit' }
  }
  return null
}

/** `"default";r=0;t=30, "daily";r=10;t=3600`: the longest `t` of the policies with nothing remaining, in ms. */
function draftPauseMs (value: string): number {
  let longest = 0
  for (const item of value.split(',')) {
    let remaining: string | undefined
    let reset: string | undefined
    for (const param of item.split(';')) {
      const eq = param.indexOf('=')
      if (eq < 0) continue
      const name = param.slice(0, eq).trim()
      if (name === 'r') remaining = param.slice(eq + 1).trim()
      else if (name === 't') reset = param.slice(eq + 1).trim()
    }
    if (remaining !== '0' || reset === undefined || !SECONDS.test(reset)) continue
    longest = Math.max(longest, Number(reset) * 1000)
  }
  return longest
}

function resetMs (value: string | undefined, wallNow: number): number {
  if (value === undefined || !SECONDS.test(value.trim())) return 0
  const seconds = Number(value.trim())
  return seconds > EPOCH_SECONDS ? Math.max(0, seconds * 1000 - wallNow) : seconds * 1000
}
