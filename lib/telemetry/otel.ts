import diagnosticsChannel from 'node:diagnostics_channel'
import type * as OtelApi from '@opentelemetry/api'
import { dispatching } from './events'

type Api = typeof OtelApi
type Attributes = Record<string, string>

/** The meter the resilience counter lives on. */
export const METER_NAME = 'fastify-resilient-http'
/** One increment per resilience event, with `event.name`, `client.name` and, where there is one, `reason`. */
export const EVENTS_COUNTER_NAME = 'http.client.resilience.events'

// The channel names of lib/events.ts, spelled out: this module only listens,
// and a channel nobody publishes on yet costs nothing.
const CHANNEL_PREFIX = 'fastify-resilient-http:'

interface Payload {
  client?: unknown
  reason?: unknown
  skipped?: unknown
  to?: unknown
  cause?: unknown
  ejected?: unknown
}

const CIRCUIT_EVENTS: Readonly<Record<string, string>> = {
  open: 'circuit_opened',
  'half-open': 'circuit_half_opened',
  closed: 'circuit_closed'
}

/** What each channel's payload counts as: the event name and its reason, if any. */
const EVENTS: ReadonlyArray<[channel: string, describe: (event: Payload) => [name: string, reason: unknown] | null]> = [
  ['retry', (event) => ['retry', event.reason]],
  ['retry-skipped', (event) => ['retry_skipped', event.skipped]],
  ['hedge', () => ['hedge', undefined]],
  ['circuit', (event) => {
    const name = CIRCUIT_EVENTS[String(event.to)]
    return name === undefined ? null : [name, event.cause]
  }],
  ['short-circuited', () => ['short_circuited', undefined]],
  ['overloaded', () => ['overloaded', undefined]],
  ['deadline-exceeded', () => ['deadline_exceeded', undefined]],
  ['replica', (event) => [event.ejected === true ? 'replica_ejected' : 'replica_returned', undefined]],
  ['stream-resumed', () => ['stream_resumed', undefined]],
  ['stream-idle-timeout', () => ['stream_idle_timeout', undefined]],
  ['rate-limited', () => ['rate_limited', undefined]],
  ['rate-limit-paused', (event) => ['rate_limit_paused', event.reason]]
]

let loaded = false
let otel: Api | null = null
let installed = false

/** `@opentelemetry/api` when the app has it installed, else `null`; looked for once. */
function otelApi (): Api | null {
  if (loaded) return otel
  loaded = true
  try {
    // An optional peer dependency: when it is absent, nothing is loaded.
    require.resolve('@opentelemetry/api')
    otel = require('@opentelemetry/api') as Api
    /* c8 ignore next 3: the package's own tests have the API installed; test/telemetry.test.ts proves this path in a child process, which records no coverage */
  } catch {
    otel = null
  }
  return otel
}

interface Tally {
  readonly name: string
  readonly client: string
  readonly reason: string | undefined
  readonly attributes: Attributes
  count: number
}

/**
 * The counter on the current global meter provider, as an asynchronous
 * (observable) counter: an event adds one to a tally of ours, and the SDK
 * reads the tallies when it collects. Events come in bulk (a refusal per
 * call while the circuit is open); hashing attributes in the SDK for each
 * one would cost more than the event itself.
 *
 * The metrics API has no proxy: a meter got before the app registers its
 * provider stays a no-op for good. So the counter is made again when the
 * provider changes, and counting starts afresh with it.
 */
class EventCounter {
  private provider: OtelApi.MeterProvider | null = null
  private tallies = new Map<string, Tally>()
  private last: Tally | null = null

  constructor (private readonly api: Api) {}

  add (name: string, client: string, reason: unknown): void {
    const provider = this.api.metrics.getMeterProvider()
    if (provider !== this.provider) this.observeOn(provider)
    const last = this.last
    // Events come in runs of one kind (refusals while a circuit is open): the last tally first.
    if (last !== null && last.name === name && last.client === client && last.reason === reason) {
      last.count++
      return
    }
    const key = typeof reason === 'string' ? `${name}\n${client}\n${reason}` : `${name}\n${client}`
    let tally = this.tallies.get(key)
    if (tally === undefined) {
      const attributes: Attributes = { 'event.name': name, 'client.name': client }
      if (typeof reason === 'string') attributes.reason = reason
      tally = { name, client, reason: typeof reason === 'string' ? reason : undefined, attributes: Object.freeze(attributes), count: 0 }
      this.tallies.set(key, tally)
    }
    tally.count++
    this.last = tally
  }

  private observeOn (provider: OtelApi.MeterProvider): void {
    this.provider = provider
    const tallies = new Map<string, Tally>()
    this.tallies = tallies
    this.last = null
    provider.getMeter(METER_NAME).createObservableCounter(EVENTS_COUNTER_NAME, {
      description: 'Resilience events of outbound HTTP calls: retries, hedges, circuit breaker transitions, refusals',
      unit: '{event}'
    }).addCallback((result) => {
      for (const tally of tallies.values()) result.observe(tally.count, tally.attributes)
    })
  }
}

function subscribe (counter: EventCounter): void {
  for (const [channel, describe] of EVENTS) {
    diagnosticsChannel.subscribe(CHANNEL_PREFIX + channel, (message) => {
      const event = message as Payload
      const described = describe(event)
      if (described === null) return
      counter.add(described[0], String(event.client), described[1])
    })
  }
}

/**
 * Connects the package to OpenTelemetry when `@opentelemetry/api` is
 * installed: every resilience event is counted on
 * `http.client.resilience.events`. (Each call's trace context needs nothing
 * here: the context manager keeps it in an async context, and the core runs
 * all of a call's attempts in its caller's.) Idempotent; without the API it
 * loads nothing and does nothing.
 */
export function installTelemetry (): void {
  if (installed) return
  installed = true
  const api = otelApi()
  /* c8 ignore next: without the API (the child process of test/telemetry.test.ts) */
  if (api === null) return
  subscribe(new EventCounter(api))
}

/**
 * The header names the active OpenTelemetry propagator injects, lower-cased
 * (`traceparent`, `tracestate`, `baggage`, ...); `[]` without the API or
 * without a propagator. The instrumentation appends these to every outbound
 * request, so copying them from the inbound request too would send two.
 */
export function propagatorFields (): readonly string[] {
  const api = otelApi()
  /* c8 ignore next: without the API (the child process of test/telemetry.test.ts) */
  if (api === null) return []
  return api.propagation.fields().map((field) => field.toLowerCase())
}

const FIRST_ATTEMPT: Readonly<Record<string, number>> = Object.freeze({})

/**
 * A `startSpanHook` for `@opentelemetry/instrumentation-undici`: gives the
 * CLIENT span of every retry and hedge `http.request.resend_count` (1 for the
 * second attempt, 2 for the third, ...), as the HTTP semantic conventions ask.
 *
 * ```ts
 * new UndiciInstrumentation({ startSpanHook: resendCountSpanHook })
 * ```
 *
 * The instrumentation starts the span inside the client's `dispatch()`, where
 * the attempt's number is known; any other undici request gets no attribute.
 */
export function resendCountSpanHook (): Readonly<Record<string, number>> {
  const attempt = dispatching.attempt
  return attempt > 1 ? { 'http.request.resend_count': attempt - 1 } : FIRST_ATTEMPT
}
