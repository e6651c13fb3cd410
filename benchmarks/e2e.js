'use strict'

// End to end: autocannon (in the orchestrator, on the upstream's CPU) drives
// GET /proxy of a Fastify app (e2e-app.js, on the client's CPU) that calls
// the upstream. A fresh app process per variant and round; the order of the
// variants rotates each round.

const autocannon = require('autocannon')
const { CLIENT_CPU, startChild, stopChild, cpuMeter } = require('./common')

const VARIANTS = ['ours', 'ours A/A', 'ours + deadline', 'raw undici']

// Every variant gets the same inbound headers: a valid request id and a
// 5 s budget (read only by `ours + deadline`).
const HEADERS = { 'x-request-id': 'bench-0b7c1e52', 'x-request-timeout-ms': '5000' }

/** One variant, one round: answers { rps, p50, p99, errors, appCpuPercent, appCpuUsPerRequest, requestsPerCpuSecond, upstreamCpuPercent }. */
async function measureE2E (variant, origin, upstreamPid, settings) {
  const { child, message } = await startChild('e2e-app.js', [variant, origin, String(settings.connections)], { cpu: CLIENT_CPU })
  try {
    if (message.error !== undefined) throw new Error(message.error)
    const url = `http://127.0.0.1:${message.port}/proxy`
    await autocannon({ url, headers: HEADERS, connections: settings.concurrency, duration: settings.warmupMs / 1000 })
    const appCpu = cpuMeter(child.pid)
    const upstreamCpu = cpuMeter(upstreamPid)
    const result = await autocannon({ url, headers: HEADERS, connections: settings.concurrency, pipelining: 1, duration: settings.durationMs / 1000 })
    const appCpuPercent = appCpu.stop()
    const rps = result.requests.total / result.duration
    return {
      rps,
      p50: result.latency.p50,
      p99: result.latency.p99,
      errors: result.errors + result.timeouts + result.non2xx,
      appCpuPercent,
      // The app's CPU time per request: what a route costs, whatever share of its core it got.
      appCpuUsPerRequest: appCpuPercent * 1e4 / rps,
      requestsPerCpuSecond: rps / (appCpuPercent / 100),
      upstreamCpuPercent: upstreamCpu.stop()
    }
  } finally {
    await stopChild(child)
  }
}

module.exports = { VARIANTS, measureE2E }
