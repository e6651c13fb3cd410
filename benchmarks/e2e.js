'use strict'

// End to end: autocannon (in the orchestrator, on the upstream's CPU) drives
// GET /proxy of a Fastify app (e2e-app.js, on the client's CPU) that calls
// the upstream. Every variant's app runs in its own process, warmed up, and
// the apps take turns in slices of autocannon, the order rotating each cycle;
// a generation of fresh app processes after another.

const autocannon = require('autocannon')
const { CLIENT_CPU, startChild, stopChild, cpuMeter } = require('./common')

const VARIANTS = ['ours', 'ours A/A', 'ours + deadline', 'raw undici']

// Every variant gets the same inbound headers: a valid request id and a
// 5 s budget (read only by `ours + deadline`).
const HEADERS = { 'x-request-id': 'bench-0b7c1e52', 'x-request-timeout-ms': '5000' }

/** One slice of autocannon against a warm app: { rps, p50, p99, errors, appCpuPercent, appCpuUsPerRequest, requestsPerCpuSecond, upstreamCpuPercent }. */
async function slice (url, child, upstreamPid, settings, durationMs) {
  const appCpu = cpuMeter(child.pid)
  const upstreamCpu = cpuMeter(upstreamPid)
  const result = await autocannon({ url, headers: HEADERS, connections: settings.concurrency, pipelining: 1, duration: durationMs / 1000 })
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
}

/**
 * The sliced form of the phase: per generation, every variant's app started
 * and warmed up, then cycles of one autocannon slice per app, the order
 * rotating (as the client phase does). Resolves with { rounds, failures, sliced }.
 */
async function slicedE2E (origin, upstreamPid, settings, log) {
  const rounds = []
  const failures = {}
  for (let generation = 0; generation < settings.generations; generation++) {
    const apps = new Map()
    try {
      for (const variant of VARIANTS) {
        try {
          const { child, message } = await startChild('e2e-app.js', [variant, origin, String(settings.connections)], { cpu: CLIENT_CPU })
          if (message.error !== undefined) throw new Error(message.error)
          const url = `http://127.0.0.1:${message.port}/proxy`
          apps.set(variant, { child, url })
          await autocannon({ url, headers: HEADERS, connections: settings.concurrency, duration: settings.warmupMs / 1000 })
        } catch (error) {
          failures[variant] = error.message.split('\n').slice(0, 2).join(' ')
        }
      }
      const names = [...apps.keys()]
      for (let cycle = 0; cycle < settings.cycles; cycle++) {
        const results = {}
        for (const variant of [...names.slice(cycle % names.length), ...names.slice(0, cycle % names.length)]) {
          const { child, url } = apps.get(variant)
          results[variant] = await slice(url, child, upstreamPid, settings, settings.sliceMs)
        }
        rounds.push(results)
      }
      log(`e2e ${generation + 1}/${settings.generations}: ${settings.cycles} cycles`)
    } finally {
      await Promise.all([...apps.values()].map(({ child }) => stopChild(child)))
    }
  }
  return { rounds, failures, sliced: true }
}

module.exports = { VARIANTS, slicedE2E }
