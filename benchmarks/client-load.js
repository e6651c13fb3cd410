'use strict'

// One contender, one round, in a fresh process:
//   node client-load.js '<json settings>'
// settings: { name, origin, concurrency, connections, warmupMs, durationMs,
//   upstreamPid, pauseAfterErrorMs = 0, maxErrors = 1000, cdf = false }
// Keeps <concurrency> calls in flight, discards the warm-up, then answers
// { requests, seconds, rps, p50, p99, p999, cpuPercent, cpuUsPerCall, upstreamCpuPercent,
//   errors, windowErrors, firstError, stats, upstream, cdf? }.
// Latencies in ms, of successful calls only; rps counts successful calls (the
// goodput); cpuPercent of one core, under 100 when the client waited; errors
// counted from the start, warm-up included. A worker whose call failed waits
// pauseAfterErrorMs before its next call (a caller that was refused comes back
// later, instead of spinning on refusals).

const { createHistogram } = require('node:perf_hooks')
const { request } = require('undici')
const contenders = require('./contenders')
const { answer, answerErrors, cpuMeter, difference, sleep } = require('./common')

/** What the upstream's /capacity saw since the last reset. */
async function upstreamStats (origin, reset) {
  const { body } = await request(`${origin}/__stats${reset ? '?reset' : ''}`)
  return body.json()
}

async function main () {
  const settings = JSON.parse(process.argv[2])
  const { name, origin, concurrency, connections, warmupMs, durationMs, upstreamPid } = settings
  const pauseAfterErrorMs = settings.pauseAfterErrorMs ?? 0
  const maxErrors = settings.maxErrors ?? 1_000
  const contender = await contenders[name](origin, { connections })

  // A contender that does not return the upstream's body is not measured.
  const check = await (contender.run ?? ((fn) => fn()))(() => contender.call())
  if (check?.ok !== true) throw new Error(`${name}: unexpected body ${JSON.stringify(check)}`)

  const histogram = createHistogram()
  let measuring = false
  let stopping = false
  let requests = 0
  let errors = 0
  let windowErrors = 0
  let firstError

  async function worker () {
    while (!stopping) {
      const start = process.hrtime.bigint()
      try {
        await contender.call()
      } catch (error) {
        errors++
        if (measuring) windowErrors++
        firstError ??= error?.message ?? String(error)
        if (errors >= maxErrors) stopping = true
        if (pauseAfterErrorMs > 0) await sleep(pauseAfterErrorMs)
        continue
      }
      if (measuring) {
        histogram.record(Number(process.hrtime.bigint() - start) || 1)
        requests++
      }
    }
  }

  const workers = []
  const startWorkers = () => {
    for (let i = 0; i < concurrency; i++) workers.push(worker())
  }
  if (contender.run === undefined) startWorkers()
  else contender.run(startWorkers)

  await sleep(warmupMs)
  await upstreamStats(origin, true)
  const statsStart = await contender.stats?.()
  histogram.reset()
  requests = 0
  measuring = true
  const start = process.hrtime.bigint()
  const cpuStart = process.cpuUsage()
  const upstreamCpu = cpuMeter(upstreamPid)
  await sleep(durationMs)
  measuring = false
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const cpu = process.cpuUsage(cpuStart)
  const upstreamCpuPercent = upstreamCpu.stop()
  const stats = difference(await contender.stats?.(), statsStart)
  const upstream = await upstreamStats(origin, false)
  stopping = true
  await Promise.all(workers)
  await Promise.race([contender.close(), sleep(2_000)])

  answer({
    requests,
    seconds,
    rps: requests / seconds,
    p50: histogram.percentile(50) / 1e6,
    p99: histogram.percentile(99) / 1e6,
    p999: histogram.percentile(99.9) / 1e6,
    cpuPercent: (cpu.user + cpu.system) / 1e4 / seconds,
    // CPU time per successful call: what the client costs, whatever share of its core it got.
    cpuUsPerCall: (cpu.user + cpu.system) / requests,
    callsPerCpuSecond: requests / ((cpu.user + cpu.system) / 1e6),
    upstreamCpuPercent,
    errors,
    windowErrors,
    firstError,
    stats,
    upstream,
    cdf: settings.cdf === true ? [...histogram.percentiles].map(([percentile, ns]) => [percentile, ns / 1e6]) : undefined
  })
}

answerErrors(main)
