'use strict'

// How fast an open circuit rejects, in a fresh process:
//   node fail-fast.js <breaker> <dead origin> <warmupMs> <durationMs>
// Each breaker is opened by a real failure (a refused connection), with a
// threshold of 1 and a recovery far beyond the run; then calls are made in
// batches (Promise.allSettled) and every rejection is checked to be the
// breaker's own open-circuit error. Answers { rejections, seconds, perSecond,
// unexpected, sample }.

const { Pool } = require('undici')
const { answer, answerErrors } = require('./common')

const BATCH = 1_000
const LONG = 10 * 60_000

function poolGet (pool) {
  return pool.request({ method: 'GET', path: '/' }).then(({ body }) => body.json())
}

function ours (origin) {
  const { createHttpClient } = require('..')
  const client = createHttpClient({ name: 'payments', baseUrl: origin, circuitBreaker: { failureThreshold: 1, recoveryMs: LONG } })
  return {
    call: () => client.get('/'),
    isOpenError: (error) => error.code === 'FRH_CIRCUIT_OPEN' && error.clientName === 'payments' && error.remainingMs > 0,
    close: () => client.close()
  }
}

const breakers = {
  ours,
  // The same, measured apart: the A/A control.
  'ours A/A': ours,

  // The breaker policy alone, the fastest way cockatiel can reject.
  async cockatiel (origin) {
    const { circuitBreaker, handleAll, ConsecutiveBreaker, BrokenCircuitError } = require('cockatiel')
    const pool = new Pool(origin)
    const policy = circuitBreaker(handleAll, { halfOpenAfter: LONG, breaker: new ConsecutiveBreaker(1) })
    const request = () => poolGet(pool)
    return {
      call: () => policy.execute(request),
      isOpenError: (error) => error instanceof BrokenCircuitError,
      close: () => pool.close()
    }
  },

  async opossum (origin) {
    const CircuitBreaker = require('opossum')
    const pool = new Pool(origin)
    const breaker = new CircuitBreaker(() => poolGet(pool), { errorThresholdPercentage: 1, resetTimeout: LONG })
    return {
      call: () => breaker.fire(),
      isOpenError: (error) => error.code === 'EOPENBREAKER',
      close: async () => {
        breaker.shutdown()
        await pool.close()
      }
    }
  },

  // For reference: an already rejected promise with one stack-less error, no breaker at all.
  async 'Promise.reject (reference)' () {
    const error = new Error('open')
    error.stack = undefined
    return {
      call: () => Promise.reject(error),
      isOpenError: (e) => e === error,
      close: async () => {}
    }
  }
}

async function main () {
  const [name, origin, warmupMs, durationMs] = process.argv.slice(2)
  const breaker = await breakers[name](origin)

  // Open it: the first call fails against the dead port.
  await breaker.call().catch(() => {})
  const sample = await breaker.call().then(() => 'resolved', (error) => `${error?.constructor?.name}: ${error?.message}`)

  let rejections = 0
  let unexpected = 0
  async function batch () {
    const calls = new Array(BATCH)
    for (let i = 0; i < BATCH; i++) calls[i] = breaker.call()
    const results = await Promise.allSettled(calls)
    for (const result of results) {
      if (result.status === 'rejected' && breaker.isOpenError(result.reason)) rejections++
      else unexpected++
    }
  }

  const warmupEnd = performance.now() + Number(warmupMs)
  while (performance.now() < warmupEnd) await batch()
  rejections = 0
  unexpected = 0
  const start = performance.now()
  const end = start + Number(durationMs)
  while (performance.now() < end) await batch()
  const seconds = (performance.now() - start) / 1000
  await Promise.race([breaker.close(), new Promise((resolve) => setTimeout(resolve, 2_000))])
  answer({ rejections, seconds, perSecond: rejections / seconds, unexpected, sample })
}

answerErrors(main)
