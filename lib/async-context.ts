import { AsyncResource } from 'node:async_hooks'

/**
 * The async context our own timers and sockets run in: none. It is made at
 * module load, outside any request, so a callback of ours that no call owns
 * (the shared timer, a socket event) never runs in a stranger's request.
 */
export const rootScope = new AsyncResource('fastify-resilient-http')

/**
 * The async context of the code that makes a call, captured once, as the call
 * goes out: what the client later does for that call (a retry, a hedge, a
 * queued attempt, a timeout, a log line or diagnostics message about it, an
 * event of its body) re-enters it with `runInAsyncScope`. Every
 * `AsyncLocalStorage` store comes along (request context, OpenTelemetry, the
 * app's own): on Node.js 24 the resource holds the caller's context frame, on
 * earlier versions each store is copied onto it as it is made.
 */
export function callerScope (): AsyncResource {
  return new AsyncResource('fastify-resilient-http:call')
}
