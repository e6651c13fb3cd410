import diagnosticsChannel from 'node:diagnostics_channel'
import path from 'node:path'
import Fastify from 'fastify'
import { test, type Test } from 'tap'
import resilientHttp, { CHANNELS, ClientClosedError } from '../../plugin'
import { type ChildResult, runChildThatMustExit } from '../helpers/child-process'
import '../helpers/fastify-types'
import {
  errorLabel, type FaultPlan, type FaultUpstream, randomPlan, startFaultUpstream, Tally, watchProcess
} from '../helpers/fault-upstream'

const SEED = Number(process.env.FAULT_SEED ?? 20_260_101)
const CALLS = 1_000
/** The client's `timeout`, which is also close()'s grace period. */
const GRACE_MS = 2_000

// Slow answers keep calls in flight, 503s with Retry-After and resets keep
// them waiting to retry, hangs keep sockets busy until the grace period ends.
const PLAN: FaultPlan = randomPlan(SEED, 0.7, { slow: 3, '503-retry-after': 2, 'reset-before-response': 2, 'no-headers': 1 })

async function shutdownUpstream (t: Test): Promise<FaultUpstream> {
  const upstream = await startFaultUpstream({ plan: PLAN, slowMs: 300, retryAfter: '1' })
  t.teardown(() => upstream.close())
  return upstream
}

async function delay (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

test(`fastify.close() while ${CALLS} calls are in flight or waiting to retry`, async (t) => {
  const problems = watchProcess(t)
  const upstream = await shutdownUpstream(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    clients: {
      api: {
        baseUrl: upstream.url,
        timeout: GRACE_MS,
        totalTimeout: 10_000,
        retry: { maxAttempts: 3, backoffInitialMs: 100, backoffMaxMs: 500 },
        circuitBreaker: false,
        pool: { connections: 16 }
      }
    }
  })
  const client = app.httpClients.api
  // A retry event is published as a wait begins; stats().retries counts the waits that ended in a retry.
  let waitsBegun = 0
  const onRetry = (): void => { waitsBegun++ }
  diagnosticsChannel.subscribe(CHANNELS.retry, onRetry)
  t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.retry, onRetry))
  const waiting = (): number => waitsBegun - client.stats().retries

  const settledTimes = new Uint8Array(CALLS)
  const outcomes = new Tally()
  const bodyFailures = new Tally()
  const calls: Array<Promise<void>> = []
  for (let id = 0; id < CALLS; id++) {
    calls.push(client.get(`/x?call=${id}`).then(async (res) => {
      settledTimes[id]++
      outcomes.add(`${res.statusCode}`)
      try {
        await res.text()
      } catch (error) {
        bodyFailures.add(errorLabel(error))
      }
    }, (error: unknown) => {
      settledTimes[id]++
      outcomes.add(errorLabel(error))
    }))
  }
  // Close once some calls wait to retry (bounded: a busy machine may be slow).
  for (let i = 0; i < 250 && waiting() < 20; i++) await delay(20)
  const atClose = { inFlight: client.stats().inFlight, waiting: waiting(), upstreamHits: upstream.requests }

  const started = Date.now()
  await app.close()
  const closeMs = Date.now() - started
  // Every call must be settled by now, give or take the callbacks already queued.
  await delay(0)
  let pendingAfterClose = 0
  for (let id = 0; id < CALLS; id++) if (settledTimes[id] === 0) pendingAfterClose++
  await Promise.all(calls)

  let once = 0
  for (let id = 0; id < CALLS; id++) if (settledTimes[id] === 1) once++
  t.ok(atClose.waiting > 0, `${atClose.waiting} calls were waiting to retry at close`)
  t.ok(atClose.inFlight > atClose.waiting, `${atClose.inFlight} calls were under way at close`)
  t.equal(pendingAfterClose, 0, 'no call is left pending once close() resolves')
  t.equal(once, CALLS, 'every call settled exactly once')
  let foreign = 0
  for (const [label, n] of [...outcomes.counts, ...bodyFailures.counts]) if (label.startsWith('foreign')) foreign += n
  t.equal(foreign, 0, 'every failure is one of our typed errors')
  t.ok(outcomes.get('ClientClosedError') > 0, 'waits and stuck attempts are cut with ClientClosedError')
  t.ok(closeMs < GRACE_MS + 3_000, `close took ${closeMs} ms (grace ${GRACE_MS} ms)`)
  t.equal(client.stats().inFlight, 0)
  t.same(problems, [])
  const late = await client.get('/x').then(() => null, (error: unknown) => error)
  t.ok(late instanceof ClientClosedError, 'a call after close: ClientClosedError')

  t.comment(`close under load: ${CALLS} calls, ${atClose.inFlight} under way and ${atClose.waiting} waiting to retry at close (${atClose.upstreamHits} upstream hits so far); close took ${closeMs} ms (grace ${GRACE_MS} ms)`)
  t.comment(`settled ${once}: ${outcomes.toString()}; failures reading a body: ${bodyFailures.toString()}`)
})

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'fault-exit.js')

async function runFixture (t: Test, nodeArgs: string[], mode: 'close' | 'heap', env: Record<string, string>, exitWithinMs = 10_000): Promise<ChildResult> {
  return runChildThatMustExit(t, [...nodeArgs, FIXTURE, mode], { cwd: path.join(__dirname, '..', '..'), env, exitWithinMs })
}

test('a process that closes under load exits by itself: no socket or timer left behind', async (t) => {
  const upstream = await shutdownUpstream(t)
  // Idle sockets stay open on the upstream's side too: one the child leaks keeps it alive.
  upstream.server.keepAliveTimeout = 60_000
  const result = await runFixture(t, ['--import', 'tsx'], 'close', { UPSTREAM_URL: upstream.url, CALLS: String(CALLS), TIMEOUT: String(GRACE_MS) })

  t.equal(result.killed, false, `exited by itself (${result.exitAfterSummaryMs} ms after its summary)`)
  t.equal(result.signal, null)
  t.equal(result.code, 0, result.stderr)
  const summary = JSON.parse(result.stdout) as { settled: number, closeMs: number, outcomes: Record<string, number>, atClose: { inFlight: number, waiting: number }, stats: { inFlight: number } }
  t.equal(summary.settled, CALLS, 'every call settled')
  t.equal(summary.stats.inFlight, 0)
  t.notOk(Object.keys(summary.outcomes).some((label) => label.includes('foreign')), 'only typed errors')
  t.ok(summary.closeMs < GRACE_MS + 3_000, `close took ${summary.closeMs} ms`)
  t.comment(`child: ${summary.atClose.inFlight} under way, ${summary.atClose.waiting} waiting at close; close ${summary.closeMs} ms; exit ${result.exitAfterSummaryMs} ms after; ${JSON.stringify(summary.outcomes)}`)
})

test('heap returns to its baseline: no leak proportional to calls', async (t) => {
  // Quick faults only: every round is the same work, none waits for a timeout.
  const upstream = await startFaultUpstream({
    plan: randomPlan(SEED, 0.3, { 503: 2, 429: 1, 'reset-before-response': 2, 'half-close': 1, 'malformed-status': 1 })
  })
  t.teardown(() => upstream.close())
  const calls = 1_500
  const rounds = 4
  const result = await runFixture(t, ['--expose-gc', '--import', 'tsx'], 'heap', {
    UPSTREAM_URL: upstream.url, CALLS: String(calls), ROUNDS: String(rounds)
  }, 30_000)
  t.equal(result.code, 0, result.stderr)
  const { heaps } = JSON.parse(result.stdout) as { heaps: number[] }
  t.equal(heaps.length, rounds)
  // The first round warms up (JIT, pools, buffers); later rounds must not keep growing with the calls.
  const growth = heaps[rounds - 1] - heaps[1]
  const perCall = growth / (calls * (rounds - 2))
  t.ok(growth < 8 * 1024 * 1024, `heap after round ${rounds} within 8 MB of round 2 (${(growth / 1024).toFixed(0)} KiB)`)
  t.comment(`heap after each round of ${calls} calls (MiB): ${heaps.map((heap) => (heap / 1048576).toFixed(1)).join(', ')}; ${perCall.toFixed(0)} bytes per call from round 2 to ${rounds}; ${upstream.requests} upstream hits`)
})
