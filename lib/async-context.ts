import { AsyncResource } from 'node:async_hooks'

/**
 * The async context our own timers and sockets run in: none. It is made at
 * module load, outside any request, so a callback of ours that no call owns
 * (the shared timer, a socket event) never runs in a stranger's request.
 */
export const rootScope = new AsyncResource('fastify-resilient-http')

/** The slice of `@opentelemetry/api`'s `context` the core uses. */
export interface OtelContextApi {
  active(): unknown
  with(context: never, fn: () => void): unknown
}

let otel: OtelContextApi | null = null

/** Set by the telemetry module when `@opentelemetry/api` is installed. */
export function setOtelContextApi (api: OtelContextApi | null): void {
  otel = api
}

/** The OpenTelemetry context of the caller, to re-enter for attempts sent later (retries, hedges, queued). */
export function captureOtelContext (): unknown {
  return otel === null ? undefined : otel.active()
}

/** Runs `fn` with the captured OpenTelemetry context active, so spans of later attempts have the caller's parent. */
export function runInOtelContext (context: unknown, fn: () => void): void {
  if (otel === null || context === undefined) fn()
  else otel.with(context as never, fn)
}
