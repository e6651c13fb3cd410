import type { RouteOptions } from 'fastify'
import { InvalidOptionsError } from '../errors'
import { describe } from '../validate'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Bounds every request of this route: its outbound calls end by this many ms after it arrived. */
    deadlineMs?: number
  }
}

/** The plugin's `deadline` option, resolved: where the caller's budget is read and whether it is forwarded. */
export interface DeadlineSettings {
  /** Lower-case name of the header that carries the ms left. */
  readonly header: string
  /** Send the ms left on every outbound attempt, in `header`. */
  readonly forward: boolean
}

/** One day: a budget longer than that is not a deadline anyone means. */
export const MAX_INBOUND_DEADLINE_MS = 86_400_000

const DIGIT_0 = 0x30
const DIGIT_9 = 0x39

/**
 * The ms an inbound deadline header grants, when its value is a decimal
 * integer from 1 to 86,400,000 (digits only: no sign, exponent, space or
 * fraction); `undefined` for anything else, a repeated header included.
 */
export function parseDeadlineHeader (value: unknown): number | undefined {
  if (typeof value !== 'string' || value.length === 0) return undefined
  let ms = 0
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i)
    if (code < DIGIT_0 || code > DIGIT_9) return undefined
    ms = ms * 10 + (code - DIGIT_0)
    // Stops a long run of digits early; the value only grows from here.
    if (ms > MAX_INBOUND_DEADLINE_MS) return undefined
  }
  return ms === 0 ? undefined : ms
}

/** A route's `config.deadlineMs` is usable when it is a positive finite number. */
export function isRouteDeadline (value: unknown): value is number {
  return typeof value === 'number' && value > 0 && Number.isFinite(value)
}

/**
 * An `onRoute` check: a route registered with a `config.deadlineMs` that is
 * not a positive finite number fails its registration, naming the route.
 */
export function checkRouteDeadline (route: RouteOptions): void {
  const value = route.config?.deadlineMs
  if (value !== undefined && !isRouteDeadline(value)) {
    throw new InvalidOptionsError('config.deadlineMs',
      `route ${String(route.method)} ${route.url}: must be a positive finite number of ms, got ${describe(value)}`)
  }
}

/**
 * The performance.now() time at which a request that arrived at `arrivedAt`
 * runs out of time: its arrival plus the smaller of the inbound header's
 * budget and the route's own, or `undefined` when neither applies.
 */
export function requestDeadlineAt (arrivedAt: number, headerMs: number | undefined, routeMs: unknown): number | undefined {
  const route = isRouteDeadline(routeMs) ? routeMs : undefined
  if (headerMs === undefined) return route === undefined ? undefined : arrivedAt + route
  return arrivedAt + (route === undefined || headerMs < route ? headerMs : route)
}
