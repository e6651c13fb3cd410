import { trace } from '@opentelemetry/api'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { createHttpClient } from '../../plugin'
import { setUpOtel, SpanKind, spansOfKind } from '../helpers/otel'
import { sendJson, startUpstream } from '../helpers/upstream'

// With the OpenTelemetry context kept by the call's own async context, every
// attempt (a queued first try, a retry sent after its wait, a queued retry)
// is a child of the span the call was made in, whoever freed the connection.
const otel = setUpOtel()

test('every attempt of a call is a child of its caller\'s span, queued or retried', async (t) => {
  const answered = new Set<string>()
  const upstream = await startUpstream(async (req, res) => {
    await sleep(10)
    const path = req.url ?? ''
    if (answered.has(path)) sendJson(res, 200, {})
    else {
      answered.add(path)
      sendJson(res, 503, {})
    }
  })
  t.teardown(() => upstream.close())
  // One connection: most attempts wait for another caller's attempt to free it.
  const client = createHttpClient({ name: 'traced', baseUrl: upstream.url, pool: { connections: 1 }, retry: { backoffInitialMs: 1, budget: false }, circuitBreaker: false })
  t.teardown(() => client.close())

  const tracer = trace.getTracer('callers')
  const callers = new Map<string, string>()
  await Promise.all(Array.from({ length: 5 }, (_, i) => tracer.startActiveSpan(`caller-${i}`, async (span) => {
    callers.set(`/caller-${i}`, span.spanContext().spanId)
    const res = await client.get(`/caller-${i}`)
    await res.text()
    span.end()
    return res.attempts
  })))

  const clients = spansOfKind(otel.spans.getFinishedSpans(), SpanKind.CLIENT)
    .filter((span) => span.attributes['server.port'] === upstream.port)
  t.equal(clients.length, 10, 'two attempts per call')
  const astray = clients
    .map((span) => [String(span.attributes['url.path']), span.parentSpanContext?.spanId] as const)
    .filter(([path, parent]) => callers.get(path) !== parent)
  t.same(astray, [], 'each attempt\'s span has its own caller\'s span as parent')
})
