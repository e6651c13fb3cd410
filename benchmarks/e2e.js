'use strict'

// End to end: autocannon (in the orchestrator, on the upstream's CPU) drives
// GET /proxy of a Fastify app (e2e-app.js, on the client's CPU) that calls
// the upstream through our plugin or through a raw undici Pool. A fresh app
// process per variant and round; the variants alternate.

const autocannon = require('autocannon')
const { CLIENT_CPU, startChild, stopChild } = require('./common')

const VARIANTS = ['ours', 'undici']

async function measure (variant, origin, settings) {
  const { child, message } = await startChild('e2e-app.js', [variant, origin, String(settings.connections)], { cpu: CLIENT_CPU })
  try {
    if (message.error !== undefined) throw new Error(message.error)
    const result = await autocannon({
      url: `http://127.0.0.1:${message.port}/proxy`,
      connections: settings.concurrency,
      pipelining: 1,
      duration: settings.durationMs / 1000,
      warmup: { connections: settings.concurrency, duration: settings.warmupMs / 1000 }
    })
    return {
      rps: result.requests.total / result.duration,
      p50: result.latency.p50,
      p99: result.latency.p99,
      errors: result.errors + result.timeouts + result.non2xx
    }
  } finally {
    await stopChild(child)
  }
}

/** Resolves with { ours: [round results], undici: [round results] }. */
async function runE2E (origin, settings, log) {
  const results = { ours: [], undici: [] }
  for (let round = 0; round < settings.rounds; round++) {
    const order = round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()
    for (const variant of order) {
      const result = await measure(variant, origin, settings)
      results[variant].push(result)
      log(`e2e round ${round + 1}/${settings.rounds} ${variant}: ${Math.round(result.rps)} req/s, p99 ${result.p99} ms`)
    }
  }
  return results
}

module.exports = { runE2E }
