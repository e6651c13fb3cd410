import diagnosticsChannel from 'node:diagnostics_channel'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import resilientHttp from '../plugin'
import { EVENTS_COUNTER_NAME, installTelemetry, METER_NAME, propagatorFields, resendCountSpanHook } from '../lib/telemetry/otel'
import type { ClientOptions } from '../lib/types'
import { runChildThatMustExit } from './helpers/child-process'
import { countOf, descendsFrom, rawHeaderValues, setUpOtel, SpanKind, spansOfKind } from './helpers/otel'
import { startUpstream, type Upstream } from './helpers/upstream'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'

// What the core does once, when the first client is made. Called here before
// the app registers its meter provider, as a service that loads the package
// before starting its SDK would.
installTelemetry()
const otel = setUpOtel()

const REMOTE_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const REMOTE_TRACEPARENT = `00-${REMOTE_TRACE_ID}-00f067aa0ba902b7-01`
const PATIENT = { timeout: 60_000, totalTimeout: 120_000 }

interface Seen {
  url: string
  traceparents: string[]
}

/** An upstream that answers `statuses` in turn (then 200) and keeps every `traceparent` it was sent. */
async function scriptedUpstream (t: Test, statuses: number[], delayMs = 0): Promise<{ upstream: Upstream, seen: Seen[] }> {
  const seen: Seen[] = []
  const upstream = await startUpstream(async (req, res, _hit, index) => {
    seen.push({ url: req.url ?? '', traceparents: rawHeaderValues(req.rawHeaders, 'traceparent') })
    if (delayMs > 0) await sleep(delayMs)
    const body = `answer ${index}`
    res.writeHead(statuses[index] ?? 200, { 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  t.teardown(() => upstream.close())
  return { upstream, seen }
}

/** A Fastify app traced by @fastify/otel whose `/call` route calls the upstream once through `api`. */
async function tracedApp (t: Test, upstream: Upstream, client: ClientOptions): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(otel.fastifyOtel.plugin())
  await app.register(resilientHttp, {
    propagateHeaders: ['traceparent'],
    clients: { api: { baseUrl: upstream.url, ...PATIENT, ...client } }
  })
  app.get('/call', async (request) => {
    const res = await request.server.httpClients.api.get('/upstream', { query: { n: String(request.query) } })
    return { statusCode: res.statusCode, attempts: res.attempts, body: await res.text() }
  })
  t.teardown(() => app.close())
  return app
}

/** The finished spans once `done` holds, polled for at most 5 s (span export follows the response). */
async function spansWhen (done: (spans: ReadableSpan[]) => boolean): Promise<ReadableSpan[]> {
  for (let i = 0; i < 250; i++) {
    const spans = otel.spans.getFinishedSpans()
    if (done(spans)) return spans
    await sleep(20)
  }
  return otel.spans.getFinishedSpans()
}

function clientSpansTo (spans: readonly ReadableSpan[], upstream: Upstream): ReadableSpan[] {
  return spansOfKind(spans, SpanKind.CLIENT).filter((span) => span.attributes['server.port'] === upstream.port)
}

/** The parent span id a `traceparent` names. */
function parentIdOf (traceparent: string): string {
  return traceparent.split('-')[2]
}

test('every resilience event is one increment, on a meter provider registered after the package loaded', async (t) => {
  const publish = (name: string, payload: object): void => diagnosticsChannel.channel(`fastify-resilient-http:${name}`).publish(payload)
  // Before the app has a meter provider: the API's no-op meter takes it.
  publish('retry', { client: 'synthetic', method: 'GET', path: '/', attempt: 1, reason: 'status 503', waitMs: 1 })
  otel.startMetrics()
  installTelemetry() // a second install subscribes nothing twice

  publish('retry', { client: 'synthetic', method: 'GET', path: '/', attempt: 1, reason: 'status 503', waitMs: 1 })
  publish('retry-skipped', { client: 'synthetic', method: 'POST', path: '/', attempt: 1, reason: 'status 503', skipped: 'method' })
  publish('hedge', { client: 'synthetic', method: 'GET', path: '/', attempt: 2, delayMs: 5 })
  publish('circuit', { client: 'synthetic', from: 'closed', to: 'open', remainingMs: 30_000, cause: 'failures' })
  publish('circuit', { client: 'synthetic', from: 'open', to: 'half-open', remainingMs: 0, cause: 'recovery' })
  publish('circuit', { client: 'synthetic', from: 'half-open', to: 'closed', remainingMs: 0, cause: 'probe' })
  publish('short-circuited', { client: 'synthetic', method: 'GET', path: '/', remainingMs: 100 })
  publish('overloaded', { client: 'synthetic', method: 'GET', path: '/', limit: 20 })
  publish('deadline-exceeded', { client: 'synthetic', method: 'GET', path: '/', attempts: 1 })
  publish('replica', { client: 'synthetic', origin: 'http://10.0.0.5:80', ejected: true, ejectionMs: 30_000, ejections: 1 })
  publish('replica', { client: 'synthetic', origin: 'http://10.0.0.5:80', ejected: false, ejectionMs: 0, ejections: 1 })
  publish('rate-limited', { client: 'synthetic', method: 'GET', path: '/', retryAfterMs: 100 })
  publish('rate-limit-paused', { client: 'synthetic', pausedMs: 2_000, reason: 'retry-after' })
  // A change of the adaptive limit is a gauge's business, not an event.
  publish('concurrency-limit', { client: 'synthetic', from: 20, to: 18 })

  const points = (await otel.points(METER_NAME, EVENTS_COUNTER_NAME)).filter((point) => point.attributes['client.name'] === 'synthetic')
  const byName = Object.fromEntries(points.map((point) => [point.attributes['event.name'], { reason: point.attributes.reason, value: point.value }]))
  t.same(byName, {
    retry: { reason: 'status 503', value: 1 },
    retry_skipped: { reason: 'method', value: 1 },
    hedge: { reason: undefined, value: 1 },
    circuit_opened: { reason: 'failures', value: 1 },
    circuit_half_opened: { reason: 'recovery', value: 1 },
    circuit_closed: { reason: 'probe', value: 1 },
    short_circuited: { reason: undefined, value: 1 },
    overloaded: { reason: undefined, value: 1 },
    deadline_exceeded: { reason: undefined, value: 1 },
    replica_ejected: { reason: undefined, value: 1 },
    replica_returned: { reason: undefined, value: 1 },
    rate_limited: { reason: undefined, value: 1 },
    rate_limit_paused: { reason: 'retry-after', value: 1 }
  })
  t.equal(points.length, 13, 'no other attribute set')
})

test('the propagator\'s header names are known, lower-case', async (t) => {
  t.same([...propagatorFields()], ['traceparent', 'tracestate'])
})

test('resendCountSpanHook gives nothing outside a dispatch of ours', async (t) => {
  t.same(resendCountSpanHook(), {})
})

test('a call retried twice is one trace: three CLIENT spans under the inbound request, one traceparent each', async (t) => {
  const { upstream, seen } = await scriptedUpstream(t, [503, 503, 200])
  const app = await tracedApp(t, upstream, { retry: { maxAttempts: 3, backoffInitialMs: 1, jitter: 'none' }, circuitBreaker: false })

  const reply = await app.inject({ url: '/call', headers: { traceparent: REMOTE_TRACEPARENT } })
  t.same(reply.json(), { statusCode: 200, attempts: 3, body: 'answer 2' })

  const spans = await spansWhen((all) => all.some((span) => span.kind === SpanKind.SERVER) && clientSpansTo(all, upstream).length >= 3)
  const [server, ...otherServers] = spansOfKind(spans, SpanKind.SERVER)
  t.ok(server, 'the inbound request has its SERVER span')
  t.equal(otherServers.length, 0)
  t.equal(server.spanContext().traceId, REMOTE_TRACE_ID, 'the SERVER span continues the caller\'s trace')

  const clients = clientSpansTo(spans, upstream)
  t.equal(clients.length, 3, 'one CLIENT span per attempt')
  for (const [i, span] of clients.entries()) {
    t.equal(span.spanContext().traceId, REMOTE_TRACE_ID, `attempt ${i + 1} is in the trace`)
    t.ok(descendsFrom(span, server, spans), `attempt ${i + 1} is under the SERVER span`)
  }
  t.same(clients.map((span) => span.parentSpanContext?.spanId), Array(3).fill(clients[0].parentSpanContext?.spanId), 'the attempts share one parent')
  t.same(clients.map((span) => span.attributes['http.request.resend_count']), [undefined, 1, 2])
  t.same(clients.map((span) => span.attributes['http.response.status_code']), [503, 503, 200])

  t.equal(seen.length, 3)
  t.same(seen.map((hit) => hit.traceparents.length), [1, 1, 1], 'exactly one traceparent per request, even with propagateHeaders: [\'traceparent\']')
  t.same(seen.map((hit) => parentIdOf(hit.traceparents[0] ?? '')), clients.map((span) => span.spanContext().spanId), 'each names its own attempt\'s span')

  const points = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  t.equal(countOf(points, { 'event.name': 'retry', 'client.name': 'api', reason: 'status 503' }), 2, 'two retries counted')
})

test('events in runs and interleaved are each counted under their own client and reason', async (t) => {
  const publish = (name: string, payload: object): void => diagnosticsChannel.channel(`fastify-resilient-http:${name}`).publish(payload)
  const refuse = (client: string): void => publish('short-circuited', { client, method: 'GET', path: '/', remainingMs: 100 })
  const retry = (client: string, reason: string): void => publish('retry', { client, method: 'GET', path: '/', attempt: 1, reason, waitMs: 1 })
  for (let i = 0; i < 3; i++) refuse('runs-a')
  refuse('runs-b')
  refuse('runs-a')
  retry('runs-a', 'status 503')
  retry('runs-a', 'status 429')
  retry('runs-a', 'status 503')
  publish('retry', { client: 'runs-a', method: 'GET', path: '/', attempt: 1, reason: { not: 'a string' }, waitMs: 1 })

  const points = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  t.equal(countOf(points, { 'event.name': 'short_circuited', 'client.name': 'runs-a' }), 4)
  t.equal(countOf(points, { 'event.name': 'short_circuited', 'client.name': 'runs-b' }), 1)
  t.equal(countOf(points, { 'event.name': 'retry', 'client.name': 'runs-a', reason: 'status 503' }), 2)
  t.equal(countOf(points, { 'event.name': 'retry', 'client.name': 'runs-a', reason: 'status 429' }), 1)
  const unnamed = points.filter((point) => point.attributes['client.name'] === 'runs-a' && point.attributes['event.name'] === 'retry' && !('reason' in point.attributes))
  t.same(unnamed.map((point) => point.value), [1], 'a reason that is not a string adds no attribute')
})

test('a breaker opening is counted, and so is each call it refuses', async (t) => {
  const before = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  const { upstream } = await scriptedUpstream(t, [500])
  const app = await tracedApp(t, upstream, { retry: false, circuitBreaker: { failureThreshold: 1, recoveryMs: 60_000 } })

  t.equal((await app.inject({ url: '/call' })).json().statusCode, 500)
  t.equal((await app.inject({ url: '/call' })).statusCode, 503, 'the open circuit refuses the second call')

  const after = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  const added = (match: Record<string, string>): number => countOf(after, match) - countOf(before, match)
  t.equal(added({ 'event.name': 'circuit_opened', 'client.name': 'api' }), 1)
  t.equal(added({ 'event.name': 'circuit_opened', 'client.name': 'api', reason: 'failures' }), 1, 'with its cause')
  t.equal(added({ 'event.name': 'short_circuited', 'client.name': 'api' }), 1)
})

test('a hedge is its own CLIENT span; the cancelled loser is not an error', async (t) => {
  const before = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  // The first attempt is held until the test ends: only the hedge can answer.
  const held: Array<() => void> = []
  const upstream = await startUpstream((_req, res, _hit, index) => {
    if (index === 0) held.push(() => res.destroy())
    else res.end('fast')
  })
  t.teardown(async () => {
    for (const release of held) release()
    await upstream.close()
  })
  const app = await tracedApp(t, upstream, { retry: false, circuitBreaker: false, hedge: { delayMs: 20, maxHedges: 1 } } as ClientOptions)
  app.get('/hedged', async (request) => {
    const res = await request.server.httpClients.api.get('/hedged')
    return { statusCode: res.statusCode, attempts: res.attempts, body: await res.text() }
  })
  otel.spans.reset()

  const reply = await app.inject({ url: '/hedged' })
  t.same(reply.json(), { statusCode: 200, attempts: 2, body: 'fast' })

  const spans = await spansWhen((all) => clientSpansTo(all, upstream).length >= 2)
  const [first, hedge] = clientSpansTo(spans, upstream)
  t.equal(hedge?.attributes['http.request.resend_count'], 1, 'the hedge is a resend')
  t.equal(hedge?.attributes['http.response.status_code'], 200)
  t.equal(first?.attributes['http.request.resend_count'], undefined)
  t.equal(first?.status.code, 0, 'the cancelled first attempt has no error status')
  t.equal(first?.attributes['error.type'], undefined, 'and no error.type')
  const after = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  t.equal(countOf(after, { 'event.name': 'hedge', 'client.name': 'api' }) - countOf(before, { 'event.name': 'hedge', 'client.name': 'api' }), 1)
})

test('an attempt that waits for a connection in the pool keeps its own request\'s trace', async (t) => {
  const { upstream } = await scriptedUpstream(t, [], 50)
  const app = await tracedApp(t, upstream, { retry: false, circuitBreaker: false, pool: { connections: 1, pipelining: 1 } })
  otel.spans.reset()

  const traceIds = ['0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331b7ad6b7169203331']
  const replies = await Promise.all(traceIds.map((traceId) => app.inject({ url: '/call', headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } })))
  t.same(replies.map((reply) => reply.statusCode), [200, 200])

  const spans = await spansWhen((all) => clientSpansTo(all, upstream).length >= 2)
  t.same(clientSpansTo(spans, upstream).map((span) => span.spanContext().traceId).sort(), [...traceIds].sort(), 'each attempt is in the trace of the request that made it')
})

test('without @opentelemetry/api, nothing is loaded and calls work', async (t) => {
  const { upstream } = await scriptedUpstream(t, [])
  const fixture = path.join(__dirname, 'fixtures', 'telemetry-without-api.ts')
  const preload = path.join(__dirname, 'fixtures', 'hide-otel-api.js')
  const tsx = pathToFileURL(require.resolve('tsx')).href
  const { code, stdout, stderr, killed } = await runChildThatMustExit(t, ['--require', preload, '--import', tsx, fixture], {
    env: { UPSTREAM_URL: upstream.url }
  })
  t.equal(killed, false)
  t.equal(code, 0, stderr)
  t.same(JSON.parse(stdout.split('\n')[0] ?? '{}'), {
    statusCode: 200,
    propagatorFields: [],
    apiResolvable: false,
    apiLoaded: false,
    listening: false
  }, 'the call is answered; nothing of OpenTelemetry is loaded or listening')
})
