import type { Attempt } from './attempt'
import { hasHeader, withoutHeader } from '../headers'
import type { PreparedRequest } from './prepare'
import type { Upstream } from '../transport/upstream'

/** The dispatch options of one attempt: the call's own, unless the attempt carries its own deadline or origin. */
export function attemptOptions (request: PreparedRequest, upstream: Upstream, now: number): PreparedRequest['options'] {
  const options = request.options
  const header = request.deadlineHeader
  // Own connections know their origin; a given dispatcher is told it.
  const otherOrigin = upstream.given !== null && upstream.origin !== options.origin
  if (header === undefined && !otherOrigin) return options
  let headers = options.headers
  if (header !== undefined) {
    // Forwarded as the whole ms left when this attempt is sent, at least 1; a default value for it gives way.
    headers = hasHeader(headers, header) ? withoutHeader(headers, header) : headers.slice()
    headers.push(header, String(Math.max(1, Math.floor((request.deadlineAt as number) - now))))
  }
  // Spelled out rather than spread: this runs for every attempt under a deadline.
  return { origin: upstream.origin, method: options.method, path: options.path, headers, body: options.body }
}

/**
 * When the attempt sent at `now` times out: its own `timeout`, or the
 * call's total timeout or the inbound deadline when either comes first
 * (the attempt is told which, and after how long, for its `TimeoutError`).
 */
export function attemptTimeout (attempt: Attempt, request: PreparedRequest, startedAt: number, totalEndsAt: number, now: number): number {
  let at = now + request.timeout
  if (totalEndsAt <= at) {
    at = totalEndsAt
    attempt.timeoutKind = 'total'
    attempt.timeoutMs = request.totalTimeout
  } else {
    attempt.timeoutMs = request.timeout
  }
  const deadlineAt = request.deadlineAt
  if (deadlineAt !== undefined && deadlineAt <= at) {
    at = deadlineAt
    attempt.timeoutKind = 'deadline'
    attempt.timeoutMs = Math.round(deadlineAt - startedAt)
  }
  return at
}
