'use strict'

// Heap growth of our client, in a fresh process started with --expose-gc:
//   node --expose-gc memory.js <origin> <path> <concurrency> <firstCalls> <totalCalls> <capMs> [<distinctTimeouts>]
// Makes <firstCalls> calls, settles, collects garbage and reads heapUsed; then
// goes on to <totalCalls> calls and reads it again. <path> /flaky answers 503
// half the time: retries run (budget off, 1 ms backoff) and the breaker counts
// every failure, with a threshold high enough that it stays closed. With
// <distinctTimeouts>, call i passes its own `timeout` of 5,000 + (i mod
// <distinctTimeouts>) ms, as calls under inbound deadlines do. Stops early at
// <capMs> so the run stays bounded, and says how far it got.

const { createHttpClient } = require('..')
const { answer, answerErrors, sleep } = require('./common')

async function settledHeap () {
  for (let i = 0; i < 4; i++) {
    global.gc()
    await sleep(20)
  }
  return process.memoryUsage().heapUsed
}

async function main () {
  if (typeof global.gc !== 'function') throw new Error('run with --expose-gc')
  const [origin, path, concurrency, firstCalls, totalCalls, capMs, distinct = '0'] = process.argv.slice(2)
  const distinctTimeouts = Number(distinct)
  const flaky = path === '/flaky'
  const client = createHttpClient({
    name: 'upstream',
    baseUrl: origin,
    retry: flaky ? { budget: false, backoffInitialMs: 1, backoffMaxMs: 5 } : undefined,
    circuitBreaker: flaky ? { failureThreshold: 1_000 } : undefined
  })
  const deadline = performance.now() + Number(capMs)
  let calls = 0
  let errors = 0
  let firstError

  async function callsUpTo (target) {
    async function worker () {
      while (calls < target && performance.now() < deadline) {
        const options = distinctTimeouts > 0 ? { timeout: 5_000 + (calls % distinctTimeouts) } : undefined
        calls++
        try {
          await (await client.get(path, options)).text()
        } catch (error) {
          errors++
          firstError ??= error?.message ?? String(error)
        }
      }
    }
    const workers = []
    for (let i = 0; i < Number(concurrency); i++) workers.push(worker())
    await Promise.all(workers)
  }

  const start = performance.now()
  await callsUpTo(Number(firstCalls))
  const heapFirst = await settledHeap()
  const firstDone = calls
  await callsUpTo(Number(totalCalls))
  const heapTotal = await settledHeap()
  const seconds = (performance.now() - start) / 1000
  const stats = client.stats()
  await client.close()
  answer({
    firstCalls: firstDone,
    totalCalls: calls,
    heapFirstMB: heapFirst / 2 ** 20,
    heapTotalMB: heapTotal / 2 ** 20,
    deltaMB: (heapTotal - heapFirst) / 2 ** 20,
    callsPerSecond: calls / seconds,
    retries: stats.retries,
    failures: stats.failures,
    circuit: stats.circuit,
    errors,
    firstError
  })
}

answerErrors(main)
