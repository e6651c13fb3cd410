'use strict'

// One contender, one round, in a fresh process:
//   node client-load.js <contender> <origin> <concurrency> <connections> <warmupMs> <durationMs>
// Keeps <concurrency> calls in flight, discards the warm-up, then answers
// { requests, seconds, rps, p50, p99, cpuPercent, errors, firstError }
// (latencies in ms; cpuPercent of one core, under 100 when the client waited
// on the upstream; errors counted from the start, warm-up included).

const { createHistogram } = require('node:perf_hooks')
const contenders = require('./contenders')
const { answer, answerErrors } = require('./common')

const MAX_ERRORS = 1_000

async function main () {
  const [name, origin, concurrency, connections, warmupMs, durationMs] = process.argv.slice(2)
  const contender = await contenders[name](origin, { connections: Number(connections) })

  // A contender that does not return the upstream's body is not measured.
  const check = await (contender.run ?? ((fn) => fn()))(() => contender.call())
  if (check?.ok !== true) throw new Error(`${name}: unexpected body ${JSON.stringify(check)}`)

  const histogram = createHistogram()
  let measuring = false
  let stopping = false
  let requests = 0
  let errors = 0
  let firstError

  async function worker () {
    while (!stopping) {
      const start = process.hrtime.bigint()
      try {
        await contender.call()
      } catch (error) {
        errors++
        firstError ??= error?.message ?? String(error)
        if (errors >= MAX_ERRORS) stopping = true
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
    for (let i = 0; i < Number(concurrency); i++) workers.push(worker())
  }
  if (contender.run === undefined) startWorkers()
  else contender.run(startWorkers)

  await new Promise((resolve) => setTimeout(resolve, Number(warmupMs)))
  histogram.reset()
  requests = 0
  measuring = true
  const start = process.hrtime.bigint()
  const cpuStart = process.cpuUsage()
  await new Promise((resolve) => setTimeout(resolve, Number(durationMs)))
  measuring = false
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const cpu = process.cpuUsage(cpuStart)
  stopping = true
  await Promise.all(workers)
  await Promise.race([contender.close(), new Promise((resolve) => setTimeout(resolve, 2_000))])

  answer({
    requests,
    seconds,
    rps: requests / seconds,
    p50: histogram.percentile(50) / 1e6,
    p99: histogram.percentile(99) / 1e6,
    cpuPercent: (cpu.user + cpu.system) / 1e4 / seconds,
    errors,
    firstError
  })
}

answerErrors(main)
