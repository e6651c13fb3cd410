import { test } from 'tap'
import '../helpers/fastify-types'
import {
  budgetWindows, errorLabel, type FaultKind, faultSummary, randomPlan, runConcurrently, seededRandom, settleDown,
  startFaultUpstream, Tally, watchProcess
} from '../helpers/fault-upstream'
import { registeredClient } from '../helpers/upstream'

// Set FAULT_SEED to replay a run: the fault of every (call, attempt) follows from it.
const SEED = Number(process.env.FAULT_SEED ?? 20_260_101)
const BUDGET = { ratio: 0.2, minPerSecond: 10 }

const CALLS = 5_000
const IN_FLIGHT = 500
const FAILURE_RATE = 0.3
// Relative weights of the failures. Kinds that hold a connection until the
// attempt timeout (no-headers, stall-body) are rare, as they are in life.
const WEIGHTS: Partial<Record<FaultKind, number>> = {
  'reset-before-response': 4,
  'reset-mid-body': 2,
  'no-headers': 0.1,
  'stall-body': 0.1,
  'half-close': 3,
  'malformed-status': 1,
  garbage: 1,
  oversize: 1,
  'oversize-chunked': 1,
  'oversize-error': 1,
  503: 5,
  '503-retry-after': 1,
  429: 3,
  '429-retry-after': 1,
  'keepalive-race': 3
}

test(`${CALLS} calls, ${IN_FLIGHT} in flight, 16 connections, ${FAILURE_RATE * 100} % of responses failing`, async (t) => {
  const problems = watchProcess(t)
  const upstream = await startFaultUpstream({
    plan: randomPlan(SEED, FAILURE_RATE, WEIGHTS),
    oversizeBytes: 256 * 1024,
    retryAfter: '1',
    keepAliveCloseMs: 1
  })
  t.teardown(() => upstream.close())
  const client = await registeredClient(t, 'load', {
    baseUrl: upstream.url,
    // The attempt timeout also runs while a request waits in the pool's queue
    // (500 calls for 16 connections): it must exceed that wait on a busy machine.
    timeout: 5_000,
    totalTimeout: 10_000,
    retry: { maxAttempts: 3, backoffInitialMs: 5, backoffMaxMs: 50, budget: BUDGET },
    // Random faults are not an outage: a high threshold keeps the breaker out of this run's way.
    circuitBreaker: { failureThreshold: 50, recoveryMs: 200 },
    pool: { connections: 16 },
    maxResponseBytes: 64 * 1024
  })

  const random = seededRandom(SEED)
  const kinds = Array.from({ length: CALLS }, () => {
    const draw = random()
    return draw < 0.6 ? 'GET' : draw < 0.85 ? 'POST' : 'POST+key'
  })
  const settledTimes = new Uint8Array(CALLS)
  const outcomes = new Tally()
  const bodyFailures = new Tally()
  let foreign = 0

  const startedAt = Date.now()
  await runConcurrently(CALLS, IN_FLIGHT, async (id) => {
    const kind = kinds[id]
    const path = `/load?call=${id}`
    const call = kind === 'GET'
      ? client.get(path)
      : client.post(path, { json: { id }, idempotencyKey: kind === 'POST+key' ? `key-${id}` : undefined })
    let body: (() => Promise<string>) | null = null
    await call.then((response) => {
      settledTimes[id]++
      outcomes.add(`${response.statusCode}`)
      body = () => response.text()
    }, (error: unknown) => {
      settledTimes[id]++
      const label = errorLabel(error)
      if (label.startsWith('foreign')) foreign++
      outcomes.add(label)
    })
    if (body === null) return
    try {
      await (body as () => Promise<string>)()
    } catch (error) {
      const label = errorLabel(error)
      if (label.startsWith('foreign')) foreign++
      bodyFailures.add(label)
    }
  })
  const endedAt = Date.now()
  const idle = await settleDown(client)
  const stats = client.stats()

  let once = 0
  for (let id = 0; id < CALLS; id++) if (settledTimes[id] === 1) once++
  t.equal(once, CALLS, 'every call settled exactly once')
  t.equal(outcomes.total(), CALLS, 'one outcome per call')
  t.equal(foreign, 0, 'every rejection is one of our typed errors')
  t.same(problems, [], 'no unhandled rejection, no uncaught exception')

  // A POST without key may be processed at most once. A 429 says the upstream
  // refused it unprocessed, which is why it may be sent again after one.
  let posts = 0
  let postsFaulted = 0
  let postsRetriedAfter429 = 0
  let postsTwice = 0
  for (let id = 0; id < CALLS; id++) {
    if (kinds[id] !== 'POST') continue
    posts++
    const count = upstream.byMarker.get(String(id))
    if (count === undefined) continue
    if (count.kinds.some((kind) => kind !== 'ok' && !kind.startsWith('429'))) postsFaulted++
    if (count.refused > 0 && count.seen > 1) postsRetriedAfter429++
    if (upstream.processed(String(id)) > 1) postsTwice++
  }
  t.equal(postsTwice, 0, `none of ${posts} POSTs without key was processed twice`)
  let keyMismatches = 0
  for (let id = 0; id < CALLS; id++) {
    if (kinds[id] !== 'POST+key') continue
    const keys = upstream.byMarker.get(String(id))?.keys ?? []
    if (keys.some((key) => key !== `key-${id}`)) keyMismatches++
  }
  t.equal(keyMismatches, 0, 'a POST with a key carries the same key on every attempt')

  t.ok(idle, 'client and pool settle down')
  t.equal(stats.inFlight, 0, 'no call under way')
  t.equal(stats.pool?.running, 0, 'no busy connection')
  t.equal(stats.pool?.pending, 0, 'nothing pending in the pool')
  t.equal(stats.requests, CALLS)

  const hits = upstream.requests + upstream.droppedOnReuse
  const offered = CALLS - stats.shortCircuited
  const windows = budgetWindows(startedAt, endedAt)
  // Each of the budget's windows grants `floor` retries beyond the ratio (and one more: the check precedes the count).
  const bound = (1 + BUDGET.ratio) * offered + (BUDGET.minPerSecond * 10 + 1) * windows
  t.ok(hits <= bound, `upstream load ${hits} <= (1 + ${BUDGET.ratio}) x ${offered} + ${BUDGET.minPerSecond * 10 + 1} x ${windows}`)
  t.ok(stats.retries <= BUDGET.ratio * CALLS + (BUDGET.minPerSecond * 10 + 1) * windows, `retries ${stats.retries} within the budget`)
  // Each (call, attempt) draws its fault independently, so about 30 % of the requests fail.
  const faultRate = upstream.faults() / hits
  t.ok(faultRate > FAILURE_RATE - 0.15 && faultRate < FAILURE_RATE + 0.15, `faults injected in ${(faultRate * 100).toFixed(1)} % of the requests`)
  t.ok(endedAt - startedAt < 60_000, 'bounded in time')

  t.comment(`seed ${SEED}: ${CALLS} calls (${posts} POST without key), ${IN_FLIGHT} in flight, 16 connections, ${endedAt - startedAt} ms`)
  t.comment(`faults injected: ${upstream.faults()} of ${hits} requests (${faultSummary(upstream).toString()})`)
  t.comment(`settled: ${once} (${outcomes.toString()})`)
  t.comment(`failures reading a resolved body: ${bodyFailures.toString()}`)
  t.comment(`upstream hits per call: ${(hits / CALLS).toFixed(3)}; retries ${stats.retries}, denied by budget ${stats.retriesDenied}, short-circuited ${stats.shortCircuited}`)
  t.comment(`POSTs without key: ${posts}; ${postsFaulted} met a fault and none was processed twice; ${postsRetriedAfter429} were sent again after a 429`)
})
