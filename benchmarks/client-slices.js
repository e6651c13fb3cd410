'use strict'

// One contender in its own process, measured in short slices that the
// orchestrator hands out in turn to every contender of the phase:
//   node client-slices.js '<json settings>'
// settings: { name, origin, concurrency, connections, warmupMs }
// Warms up (calls kept in flight for warmupMs), answers { ready }, then
// waits. Each { sliceMs } message runs <concurrency> workers for that long
// and answers { requests, seconds, cpuUs, p50, p99, errors, stats? } for the slice
// (latencies in ms; the calls still in flight when it ends are let finish
// and not counted). { exit } closes the contender and exits.
//
// Slices of a few hundred ms, rotating between contenders that stay warm,
// put every contender under the same moments of a shared machine: the noise
// of the host (other VMs, frequency) falls on all sides of a ratio alike.

const { createHistogram } = require('node:perf_hooks')
const contenders = require('./contenders')
const { answerErrors, difference, sleep } = require('./common')

async function main () {
  const { name, origin, concurrency, connections, warmupMs } = JSON.parse(process.argv[2])
  const contender = await contenders[name](origin, { connections })
  // `run`, when the contender has one, makes its calls inside an inbound request's context.
  const inContext = contender.run ?? ((fn) => fn())
  const check = await inContext(() => contender.call())
  if (check?.ok !== true) throw new Error(`${name}: unexpected body ${JSON.stringify(check)}`)

  const histogram = createHistogram()
  // Read by the workers, set by run(): an object, as the loop itself never changes it.
  const workload = { stopping: false }
  let requests = 0
  let errors = 0

  async function worker () {
    while (!workload.stopping) {
      const start = process.hrtime.bigint()
      try {
        await contender.call()
      } catch {
        errors++
        continue
      }
      if (!workload.stopping) {
        histogram.record(Number(process.hrtime.bigint() - start) || 1)
        requests++
      }
    }
  }

  /** Runs the workers for `ms`; resolves with what the window saw, once every call has settled. */
  async function run (ms) {
    histogram.reset()
    requests = 0
    errors = 0
    workload.stopping = false
    const workers = []
    const statsStart = await contender.stats?.()
    const start = process.hrtime.bigint()
    const cpuStart = process.cpuUsage()
    inContext(() => {
      for (let i = 0; i < concurrency; i++) workers.push(worker())
    })
    await sleep(ms)
    workload.stopping = true
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const cpu = process.cpuUsage(cpuStart)
    const counted = { requests, errors }
    const stats = difference(await contender.stats?.(), statsStart)
    await Promise.all(workers)
    return { ...counted, stats, seconds, cpuUs: cpu.user + cpu.system, p50: histogram.percentile(50) / 1e6, p99: histogram.percentile(99) / 1e6 }
  }

  await run(warmupMs)
  process.on('message', (message) => {
    if (message.exit === true) {
      Promise.race([contender.close(), sleep(2_000)]).then(() => process.exit(0))
      return
    }
    run(message.sliceMs).then((slice) => process.send(slice), (error) => process.send({ error: error?.stack ?? String(error) }))
  })
  process.send({ ready: true })
}

answerErrors(main)
