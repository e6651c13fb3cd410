/** The part of `@opentelemetry/api`'s `context` that a call needs to keep its trace across attempts. */
export interface OtelContextApi {
  active (): unknown
  with (context: never, fn: (...args: never[]) => unknown, thisArg?: unknown, ...args: never[]): unknown
}

let contextApi: OtelContextApi | null = null

/**
 * Hands the core OpenTelemetry's context API (or `null`), so that every
 * later dispatch of a call (a queued attempt, a retry, a hedge) runs in the
 * context that was active when the call started.
 */
export function setOtelContextApi (api: OtelContextApi | null): void {
  contextApi = api
}

/** The context API handed over by the telemetry module, or `null`. */
export function otelContextApi (): OtelContextApi | null {
  return contextApi
}
