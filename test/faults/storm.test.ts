import diagnosticsChannel from 'node:diagnostics_channel'
import { test, type Test } from 'tap'
import { type CircuitEvent, CHANNELS } from '../../plugin'
import '../helpers/fastify-types'
import { budgetWindows, errorLabel, runConcurrently, startFaultUpstream, Tally, watchProcess } from '../helpers/fault-upstream'
import { registeredClient } from '../helpers/upstream'

const BUDGET = { ratio: 0.2, minPerSecond: 10 }

function circuitEvents (t: Test, clientName: string): CircuitEvent[] {
  const events: CircuitEvent[] = []
  const listener = (message: unknown): void => {
    if ((message as CircuitEvent).client === clientName) events.push(message as CircuitEvent)
  }
  diagnosticsChannel.subscribe(CHANNELS.circuit, listener)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.circuit, listener))
  return events
}

test('a 503 storm: the retry budget holds the upstream load under (1 + ratio) x offered + floor', async (t) => {
  const problems = watchProcess(t)
  const upstream = await startFaultUpstream({ plan: () => '503' })
  t.teardown(() => upstream.close())
  // Five attempts per call and no breaker: without the budget the upstream would see 5 x the calls.
  // The timeout is generous: it also runs while 500 calls queue for 16 connections.
  const client = await registeredClient(t, 'storm', {
    baseUrl: upstream.url,
    timeout: 20_000,
    totalTimeout: 30_000,
    retry: { maxAttempts: 5, backoffInitialMs: 1, backoffMaxMs: 5, budget: BUDGET },
    circuitBreaker: false,
    pool: { connections: 16 }
  })

  const calls = 2_000
  const outcomes = new Tally()
  const startedAt = Date.now()
  await runConcurrently(calls, 500, async (id) => {
    try {
      const res = await client.get(`/storm?call=${id}`)
      await res.text()
      outcomes.add(`${res.statusCode}`)
    } catch (error) {
      outcomes.add(errorLabel(error))
    }
  })
  const endedAt = Date.now()
  const stats = client.stats()
  const windows = budgetWindows(startedAt, endedAt)
  // Each window grants `floor` retries beyond the ratio, and one more as the check is made before counting.
  const bound = (1 + BUDGET.ratio) * calls + (BUDGET.minPerSecond * 10 + 1) * windows

  t.equal(outcomes.get('503'), calls, 'every call resolved with the last 503')
  t.ok(upstream.requests <= bound, `upstream saw ${upstream.requests} <= (1 + ${BUDGET.ratio}) x ${calls} + ${BUDGET.minPerSecond * 10 + 1} x ${windows}`)
  t.ok(stats.retriesDenied > 0, 'the budget refused retries')
  t.equal(upstream.requests, calls + stats.retries, 'every request is a call or a counted retry')
  t.same(problems, [])
  t.comment(`503 storm: ${calls} calls in ${endedAt - startedAt} ms: ${upstream.requests} upstream hits (${(upstream.requests / calls).toFixed(2)} per call; 5.00 without the budget), ${stats.retries} retries, ${stats.retriesDenied} denied`)
})

test('the breaker opens during a storm and closes once the upstream heals', async (t) => {
  const problems = watchProcess(t)
  const upstream = await startFaultUpstream()
  t.teardown(() => upstream.close())
  const client = await registeredClient(t, 'breaker', {
    baseUrl: upstream.url,
    timeout: 10_000,
    retry: { maxAttempts: 3, backoffInitialMs: 1, backoffMaxMs: 5, budget: BUDGET },
    circuitBreaker: { failureThreshold: 5, recoveryMs: 300, halfOpenMaxProbes: 1 },
    pool: { connections: 16 }
  })
  const events = circuitEvents(t, 'breaker')
  const outcomes = new Tally()
  async function phase (calls: number, inFlight: number): Promise<void> {
    await runConcurrently(calls, inFlight, async () => {
      try {
        const res = await client.get('/')
        await res.text()
        outcomes.add(`${res.statusCode}`)
      } catch (error) {
        outcomes.add(errorLabel(error))
      }
    })
  }

  await phase(200, 50)
  t.equal(outcomes.get('200'), 200, 'healthy: every call succeeds')
  t.equal(events.length, 0, 'and the circuit stays closed')

  upstream.plan = () => '503'
  const hitsBefore = upstream.requests
  await phase(1_000, 100)
  const stormHits = upstream.requests - hitsBefore
  t.same(events.length > 0 && [events[0].from, events[0].to], ['closed', 'open'], 'the storm opens the circuit')
  t.ok(outcomes.get('CircuitOpenError') > 0, 'calls are refused with CircuitOpenError while it is open')
  t.equal(client.stats().shortCircuited, outcomes.get('CircuitOpenError'))
  t.ok(stormHits < 1_000, `the upstream is shielded: ${stormHits} hits for 1000 calls`)

  upstream.plan = () => 'ok'
  for (let waited = 0; client.stats().circuit === 'open' && waited < 5_000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.equal(client.stats().circuit, 'half-open', 'after recoveryMs the circuit half-opens by itself')
  const res = await client.get('/')
  t.equal(res.statusCode, 200, 'the probe succeeds')
  await res.text()
  t.equal(client.stats().circuit, 'closed', 'and closes the circuit')
  const last = events[events.length - 1]
  t.same([last.from, last.to], ['half-open', 'closed'], 'the last transition is half-open -> closed')

  const before = outcomes.get('200')
  await phase(200, 50)
  t.equal(outcomes.get('200') - before, 200, 'healed: every call succeeds again')
  t.same(problems, [])
  t.comment(`breaker: closed -> ${events.map((event) => event.to).join(' -> ')}; storm: 1000 calls, ${stormHits} upstream hits; outcomes ${outcomes.toString()}`)
})
