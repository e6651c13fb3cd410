import { once } from 'node:events'
import { Worker } from 'node:worker_threads'
import { request } from 'undici'
import { test, type Test } from 'tap'
import { LatencyTracker, select } from '../lib/pipeline/hedging'
import { createHttpClient } from '../lib/api/http-client'

test('select() finds the k-th smallest, duplicates and all', async (t) => {
  // A small linear congruential generator: the same arrays on every run.
  let seed = 7
  const next = (): number => {
    seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648
    return seed / 2_147_483_648
  }
  let wrong = 0
  for (let run = 0; run < 300; run++) {
    const length = 1 + Math.floor(next() * 1_200)
    const values = new Float64Array(length)
    for (let i = 0; i < length; i++) values[i] = run % 3 === 0 ? next() : run % 3 === 1 ? Math.floor(next() * 4) : 5
    const k = Math.floor(next() * length)
    const sorted = Float64Array.from(values).sort()
    if (select(values, k) !== sorted[k]) wrong++
  }
  t.equal(wrong, 0, 'as a full sort would say, in 300 arrays')
  t.equal(select(Float64Array.of(3, 1, 2), 0), 1)
  t.equal(select(Float64Array.of(3, 1, 2), 2), 3)
})

test('the tracker gives no delay before 100 samples, then the p95 of the last 1,000', async (t) => {
  const tracker = new LatencyTracker()
  for (let i = 1; i <= 99; i++) tracker.record(i)
  t.equal(tracker.p95, Infinity, '99 samples: no hedge yet')
  tracker.record(100)
  t.equal(tracker.p95, 96, 'the 96th of 1..100 (index 95)')
  for (let i = 0; i < 1_000; i++) tracker.record(i < 950 ? 1 : 1_000)
  t.equal(tracker.p95, 1_000, 'the last 1,000 only: 5 % at 1,000 ms')
  for (let i = 0; i < 1_000; i++) tracker.record(2)
  t.equal(tracker.p95, 2, 'older samples are forgotten')
})

const DELAY_MS = 150
const ANSWER_MS = 200
const BLOCK_MS = 600

/** An upstream on its own thread, so that it answers while this thread's event loop is blocked. */
async function threadUpstream (t: Test): Promise<{ origin: string, worker: Worker }> {
  const worker = new Worker(`
    const http = require('node:http')
    const { parentPort } = require('node:worker_threads')
    let requests = 0
    const server = http.createServer((req, res) => {
      if (req.url === '/count') return res.end(String(requests))
      requests++
      if (req.url !== '/item') return res.end('answer')
      // Says it has the request, and answers later: while the client's thread is blocked.
      parentPort.postMessage('request')
      setTimeout(() => res.end('answer'), ${ANSWER_MS})
    })
    server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port))
  `, { eval: true })
  t.teardown(() => worker.terminate())
  const [port] = await once(worker, 'message') as [number]
  return { origin: `http://127.0.0.1:${port}`, worker }
}

test('a hedge falls due while its answer waits unread: the answer is read first, and no hedge is sent', async (t) => {
  const { origin, worker } = await threadUpstream(t)
  const client = createHttpClient({ name: 'catalog', baseUrl: origin, hedge: { delayMs: DELAY_MS }, retry: false, circuitBreaker: false })
  t.teardown(() => client.close())
  t.equal(await (await client.get('/warm')).text(), 'answer', 'a connection is open and idle')
  const upstreamCount = async (): Promise<number> => Number(await (await request(`${origin}/count`)).body.text())

  // On a busy machine the upstream's word may come after the hedge delay, and then there is
  // nothing to show: tried again, a bounded number of times.
  for (let run = 1; run <= 3; run++) {
    const before = await upstreamCount()
    const started = performance.now()
    let blockedAfter = Infinity
    // Once the upstream has the request, this thread is blocked past the hedge delay. The upstream
    // answers meanwhile, so the loop next runs the due hedge timer with the answer there, unread.
    worker.once('message', () => {
      blockedAfter = performance.now() - started
      const until = performance.now() + BLOCK_MS
      while (performance.now() < until);
    })
    const res = await client.get('/item')
    const body = await res.text()
    if (blockedAfter >= DELAY_MS && run < 3) continue
    t.ok(blockedAfter < DELAY_MS, `blocked ${Math.round(blockedAfter)} ms into the call, before the hedge delay`)
    t.equal(body, 'answer')
    t.equal(res.attempts, 1, 'answered by the first attempt')
    t.equal(client.stats().hedges, 0, 'no hedge sent')
    t.equal(await upstreamCount() - before, 1, 'the upstream saw the call once')
    break
  }
})
