import { test } from 'tap'
import { EVENTS_COUNTER_NAME, installTelemetry, METER_NAME } from '../lib/telemetry/otel'
import { setUpOtel } from './helpers/otel'
import { ManualClock, clockedClient } from './helpers/manual-clock'
import { sendJson, startUpstream } from './helpers/upstream'
import { dispatcherOption } from './helpers/dispatcher'

installTelemetry()
const otel = setUpOtel()
otel.startMetrics()

test('the OpenTelemetry counter gives the rule that opened the circuit as its reason', async (t) => {
  let status = 503
  let slowMs = 0
  const clock = new ManualClock()
  const upstream = await startUpstream((_req, res) => {
    // The manual clock stands for the upstream's latency: it moves while the request is being answered.
    clock.advance(slowMs)
    sendJson(res, status, {})
  })
  t.teardown(() => upstream.close())
  const make = (name: string, circuitBreaker: object) => {
    const client = clockedClient({ name, baseUrl: upstream.url, retry: false, timeout: 50_000, totalTimeout: 100_000, circuitBreaker, ...dispatcherOption() }, clock)
    t.teardown(() => client.close())
    return client
  }
  const ratio = make('ratio', { failureThreshold: 100, failureRatio: 0.5, minimumThroughput: 2 })
  for (let i = 0; i < 2; i++) await (await ratio.get('/')).text()
  status = 200
  slowMs = 2_000
  const slow = make('slow', { slowCallMs: 1_000, minimumThroughput: 2 })
  for (let i = 0; i < 2; i++) await (await slow.get('/')).text()
  t.equal(ratio.stats().circuit, 'open')
  t.equal(slow.stats().circuit, 'open')

  const points = await otel.points(METER_NAME, EVENTS_COUNTER_NAME)
  const opened = (client: string) => points
    .filter((point) => point.attributes['client.name'] === client && point.attributes['event.name'] === 'circuit_opened')
    .map((point) => ({ reason: point.attributes.reason, value: point.value }))
  t.same(opened('ratio'), [{ reason: 'failure-ratio', value: 1 }])
  t.same(opened('slow'), [{ reason: 'slow-calls', value: 1 }])
})
