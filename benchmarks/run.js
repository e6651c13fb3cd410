'use strict'

// npm run bench                  the full run (about 6 minutes, each phase bounded)
// BENCH_QUICK=1 npm run bench    a smoke run of about 2 minutes, not for comparison
// BENCH_ONLY=hedging,overload    only these phases (client, e2e, failFast, memory,
//                                hedging, overload, otel, breaker, streaming, bodies, rateLimit); printed, not written
// BENCH_RATE_LIMIT_S=1           the rateLimit phase's fleet runs last this many seconds (default 10)
// BENCH_PEERS=1                  also got, axios, undici fetch and RetryAgent,
//                                cockatiel and opossum in the throughput phase
// Prints one markdown report and writes it to benchmarks/results/latest-node<major>.md,
// with the latency CDF of the hedging phase in benchmarks/results/hedging-cdf.svg.

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { slicedE2E } = require('./e2e')
const { CLIENT_CPU, SERVER_CPU, canPin, cpuMeter, startChild, runChild, stopChild } = require('./common')
const { log, runRounds } = require('./rounds')
const { report, hedgingSvg } = require('./report')
const { rateLimitPhase } = require('./rate-limit')

const QUICK = process.env.BENCH_QUICK === '1'
const ONLY = process.env.BENCH_ONLY?.split(',').map((name) => name.trim()).filter(Boolean)
const PEERS = process.env.BENCH_PEERS === '1'
// Read before the orchestrator pins itself to one CPU.
const AVAILABLE_CPUS = os.availableParallelism()
const CONNECTIONS = 128

const CLIENT = ['ours', 'ours A/A', 'ours + ratio rules', 'undici', 'undici dispatch']
const CLIENT_PEERS = ['ours + request id', 'undici RetryAgent', 'undici fetch', 'got', 'axios', 'cockatiel', 'opossum']
const FAIL_FAST = ['ours', 'ours A/A', 'cockatiel', 'opossum', 'Promise.reject (reference)']
const HEDGING = ['tail, no hedging', 'tail, no hedging A/A', 'tail, hedge auto']
const OVERLOAD = ['overload, unprotected', 'overload, adaptive']
const OTEL = ['otel counter off', 'otel counter off A/A', 'otel counter on']
const BODIES = ['ours form', 'undici form', 'ours multipart', 'undici multipart']
const STREAMING = ['ours ndjson', 'undici request + split2', 'ours events', 'undici request + eventsource-parser', 'undici request + eventsource-parser, for await']

// Each phase has a time budget; a phase that runs out of it does fewer rounds
// and the report says how many it did.
const scale = QUICK ? 0.5 : 1
const PLAN = {
  // Per generation of fresh processes: a warm-up of 2 s per contender (the JIT has then compiled
  // its hot path, as in a service that has run a while), then cycles of one 400 ms slice per contender.
  client: { generations: QUICK ? 1 : 3, cycles: QUICK ? 10 : 12, sliceMs: 400, warmupMs: 2_000, concurrency: 64 },
  // Fastify apps differ more from process to process than the clients do: more generations, fewer cycles.
  e2e: { generations: QUICK ? 1 : 5, cycles: 4, sliceMs: 750, warmupMs: 1_500, concurrency: 64 },
  failFast: { rounds: QUICK ? 1 : 3, warmupMs: 200, durationMs: 800, budgetMs: 30_000 * scale },
  memory: { firstCalls: 10_000, totalCalls: QUICK ? 50_000 : 200_000, capMs: 30_000 * scale, distinctTimeouts: 20_000, concurrency: 64 },
  hedging: { rounds: QUICK ? 1 : 3, warmupMs: 1_000, durationMs: 3_000 * scale, budgetMs: 55_000 * scale, concurrency: 64 },
  overload: { rounds: QUICK ? 1 : 3, warmupMs: 1_500, durationMs: 3_000 * scale, budgetMs: 40_000 * scale, concurrency: 200, pauseAfterErrorMs: 20 },
  otel: { generations: QUICK ? 1 : 3, cycles: QUICK ? 6 : 10, sliceMs: 400, warmupMs: 2_000, concurrency: 64 },
  // A form and a multipart upload per call, against undici request() with the same body; sliced as the client phase.
  bodies: { generations: QUICK ? 1 : 3, cycles: QUICK ? 6 : 10, sliceMs: 400, warmupMs: 2_000, concurrency: 64 },
  // A simulated clock: runs of each rule and rate (seeds), and hours of traffic at 5 % failures.
  breaker: { seeds: QUICK ? 5 : 25, hours: QUICK ? 1 : 10 },
  // Streams of 16 MB read back to back for durationMs per contender and round; then one slow consumer over `mb` MB.
  streaming: { rounds: QUICK ? 1 : 5, durationMs: QUICK ? 500 : 3_000, budgetMs: 90_000 * scale, mb: QUICK ? 20 : 200 },
  // Fleets of 1, 2 and 4 processes for durationMs each, shared and not; then the cost rounds; then one pause.
  rateLimit: {
    durationMs: 1_000 * Number(process.env.BENCH_RATE_LIMIT_S ?? (QUICK ? 3 : 10)),
    costRounds: QUICK ? 1 : 3,
    costMs: QUICK ? 1_000 : 3_000,
    pauseAfterS: 2,
    pauseRunMs: 5_000
  }
}

async function deadOrigin () {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

const brief = (r) => `${Math.round(r.rps)} req/s, p99 ${r.p99.toFixed(2)} ms, client CPU ${Math.round(r.cpuPercent)} %, upstream CPU ${Math.round(r.upstreamCpuPercent)} %` +
  (r.windowErrors > 0 ? `, ${r.windowErrors} failed` : '')

/** The next IPC message of a child, or an error after `timeoutMs`. */
function nextMessage (child, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    child.once('message', (message) => {
      clearTimeout(timer)
      if (message.error !== undefined) reject(new Error(message.error))
      else resolve(message)
    })
  })
}

/**
 * The client phase: every contender in its own process, warmed up one after
 * the other, then measured in short slices handed out in turn (the order
 * rotating each cycle). A cycle is a round: ratios are taken within it.
 */
async function slicedPhase (label, names, plan, upstream) {
  const rounds = []
  const failures = {}
  // Each process has its own luck (where the JIT and the allocator put things): fresh ones each generation.
  for (let generation = 0; generation < plan.generations; generation++) {
    rounds.push(...await slicedGeneration(`${label} ${generation + 1}/${plan.generations}`, names, plan, upstream, failures))
  }
  return { rounds, failures, sliced: true }
}

async function slicedGeneration (label, names, plan, upstream, failures) {
  const children = new Map()
  try {
    for (const name of names) {
      const settings = { name, origin: upstream.origin, concurrency: plan.concurrency, connections: CONNECTIONS, warmupMs: plan.warmupMs }
      try {
        const { child } = await startChild('client-slices.js', [JSON.stringify(settings)], { cpu: CLIENT_CPU, timeoutMs: plan.warmupMs + 20_000 })
        children.set(name, child)
        log(`${label} ${name}: warmed up for ${plan.warmupMs / 1000} s`)
      } catch (error) {
        failures[name] = error.message.split('\n').slice(0, 2).join(' ')
        log(`${label} ${name}: FAILED ${failures[name]}`)
      }
    }
    const rounds = []
    for (let cycle = 0; cycle < plan.cycles; cycle++) {
      const results = {}
      const order = [...children.keys()]
      for (const name of [...order.slice(cycle % order.length), ...order.slice(0, cycle % order.length)]) {
        const child = children.get(name)
        const upstreamCpu = cpuMeter(upstream.pid)
        child.send({ sliceMs: plan.sliceMs })
        try {
          const slice = await nextMessage(child, plan.sliceMs + 10_000)
          const upstreamCpuPercent = upstreamCpu.stop()
          results[name] = {
            rps: slice.requests / slice.seconds,
            p50: slice.p50,
            p99: slice.p99,
            cpuPercent: slice.cpuUs / 1e4 / slice.seconds,
            cpuUsPerCall: slice.cpuUs / slice.requests,
            callsPerCpuSecond: slice.requests / (slice.cpuUs / 1e6),
            upstreamCpuPercent,
            errors: slice.errors,
            stats: slice.stats
          }
        } catch (error) {
          failures[name] = error.message.split('\n').slice(0, 2).join(' ')
          log(`${label} cycle ${cycle + 1} ${name}: FAILED ${failures[name]}`)
        }
      }
      rounds.push(results)
    }
    log(`${label}: ${plan.cycles} cycles`)
    return rounds
  } finally {
    await Promise.all([...children.values()].map((child) => {
      child.send({ exit: true })
      return stopChild(child, 3_000)
    }))
  }
}

/** A client-load phase: `names` against `urlOrigin`, with the plan's settings. */
function loadPhase (label, names, plan, upstream, extra = {}) {
  const timeoutMs = plan.warmupMs + plan.durationMs + 20_000
  return runRounds(label, names, plan, (name) => {
    const settings = { name, origin: upstream.origin, upstreamPid: upstream.pid, concurrency: plan.concurrency, connections: CONNECTIONS, warmupMs: plan.warmupMs, durationMs: plan.durationMs, ...extra }
    return runChild('client-load.js', [JSON.stringify(settings)], { cpu: CLIENT_CPU, timeoutMs })
  }, brief)
}

async function memoryRuns (origin) {
  const { firstCalls, totalCalls, capMs, distinctTimeouts, concurrency } = PLAN.memory
  const runs = {}
  const scenarios = [
    ['all calls succeed', '/', 0],
    [`50 % answer 503, retried; ${distinctTimeouts.toLocaleString('en-US')} distinct per-call timeouts`, '/flaky', distinctTimeouts]
  ]
  for (const [label, urlPath, distinct] of scenarios) {
    const args = [origin, urlPath, String(concurrency), String(firstCalls), String(totalCalls), String(capMs), String(distinct)]
    try {
      runs[label] = await runChild('memory.js', args, { cpu: CLIENT_CPU, execArgv: ['--expose-gc'], timeoutMs: capMs + 20_000 })
      log(`memory ${label}: ${runs[label].deltaMB.toFixed(2)} MB from ${runs[label].firstCalls} to ${runs[label].totalCalls} calls`)
    } catch (error) {
      runs[label] = { error: error.message.split('\n').slice(0, 2).join(' ') }
      log(`memory ${label}: FAILED ${runs[label].error}`)
    }
  }
  return runs
}

const PHASES = {
  client: (upstream) => slicedPhase('client', PEERS ? [...CLIENT, ...CLIENT_PEERS] : CLIENT, PLAN.client, upstream),
  e2e: (upstream) => slicedE2E(upstream.origin, upstream.pid, { ...PLAN.e2e, connections: CONNECTIONS }, log),
  failFast: async () => {
    const origin = await deadOrigin()
    const plan = PLAN.failFast
    return runRounds('fail-fast', FAIL_FAST, plan,
      (name) => runChild('fail-fast.js', [name, origin, String(plan.warmupMs), String(plan.durationMs)], { cpu: CLIENT_CPU, timeoutMs: plan.warmupMs + plan.durationMs + 15_000 }),
      (r) => `${Math.round(r.perSecond)} rejections/s`)
  },
  memory: (upstream) => memoryRuns(upstream.origin),
  hedging: (upstream) => loadPhase('hedging', HEDGING, PLAN.hedging, upstream, { cdf: true }),
  overload: (upstream) => loadPhase('overload', OVERLOAD, PLAN.overload, upstream, { pauseAfterErrorMs: PLAN.overload.pauseAfterErrorMs, maxErrors: 1e12 }),
  otel: (upstream) => slicedPhase('otel', OTEL, PLAN.otel, upstream),
  bodies: (upstream) => slicedPhase('bodies', BODIES, PLAN.bodies, upstream),
  streaming: async () => {
    const plan = PLAN.streaming
    const { child, message } = await startChild('streaming-upstream.js', [], { cpu: SERVER_CPU })
    const origin = `http://127.0.0.1:${message.port}`
    try {
      const phase = await runRounds('streaming', STREAMING, plan,
        (name) => runChild('streaming.js', [name, origin, String(plan.durationMs)], { cpu: CLIENT_CPU, timeoutMs: plan.durationMs + 60_000 }),
        (r) => `${Math.round(r.perSecond)} items/s`)
      phase.slowConsumer = await runChild('streaming.js', ['slow consumer', origin, '0', String(plan.mb)], { cpu: CLIENT_CPU, execArgv: ['--expose-gc'], timeoutMs: 600_000 })
      const s = phase.slowConsumer
      log(`streaming: slow consumer read ${s.mb} MB at ${s.readMBps.toFixed(1)} MB/s (raw ${s.rawMBps.toFixed(1)} MB/s); rss ${s.start.rssMB.toFixed(1)} → ${s.end.rssMB.toFixed(1)} MB`)
      return phase
    } finally {
      await stopChild(child)
    }
  },
  rateLimit: () => rateLimitPhase(PLAN.rateLimit, log),
  breaker: async () => {
    const { seeds, hours } = PLAN.breaker
    const result = await runChild('breaker-sim.js', [String(seeds), String(hours)], { cpu: CLIENT_CPU, timeoutMs: 600_000 })
    log(`breaker: ${seeds} runs per rule and rate, ${hours} simulated hour(s) at 5 % failures, in ${result.seconds.toFixed(1)} s`)
    return result
  }
}

function machine (startedAt, seconds, loadBefore) {
  const cpus = os.cpus()
  const only = ONLY === undefined ? '' : `BENCH_ONLY=${ONLY.join(',')} `
  return {
    quick: QUICK,
    date: startedAt.toISOString(),
    node: `${process.version} on ${os.platform()} ${os.arch()} (${process.execPath})`,
    cpu: `${cpus[0]?.model ?? 'unknown'}, ${cpus.length} cores (${AVAILABLE_CPUS} available to the bench)`,
    pinning: canPin
      ? `clients and the Fastify app on CPU ${CLIENT_CPU}; upstream, autocannon and the orchestrator on CPU ${SERVER_CPU}`
      : 'none (taskset is missing or fewer than 2 cores); processes run unpinned',
    load: `${loadBefore.map((value) => value.toFixed(1)).join(' / ')} before, ${os.loadavg().map((value) => value.toFixed(1)).join(' / ')} after (1 / 5 / 15 min)`,
    command: `${only}${QUICK ? 'BENCH_QUICK=1 ' : ''}${PEERS ? 'BENCH_PEERS=1 ' : ''}npm run bench`,
    seconds
  }
}

async function main () {
  const startedAt = new Date()
  const loadBefore = os.loadavg()
  // The orchestrator is idle while a child measures, but autocannon runs in it: keep it off the client's CPU.
  if (canPin) spawnSync('taskset', ['-cp', SERVER_CPU, String(process.pid)], { stdio: 'ignore' })
  log(`${QUICK ? 'quick' : 'full'} run; ${canPin ? 'pinned with taskset' : 'unpinned (no taskset or a single core)'}`)
  const names = ONLY ?? Object.keys(PHASES)
  for (const name of names) if (PHASES[name] === undefined) throw new Error(`unknown phase ${name} (expected one of ${Object.keys(PHASES).join(', ')})`)

  const { child, message } = await startChild('upstream.js', [], { cpu: SERVER_CPU })
  const upstream = { origin: `http://127.0.0.1:${message.port}`, pid: message.pid }
  const results = {}
  try {
    for (const name of names) {
      try {
        results[name] = await PHASES[name](upstream)
      } catch (error) {
        results[name] = { error: error.message.split('\n').slice(0, 2).join(' ') }
        log(`${name}: FAILED ${results[name].error}`)
      }
    }
  } finally {
    await stopChild(child)
  }
  const about = machine(startedAt, (Date.now() - startedAt) / 1000, loadBefore)
  const table = report(results, PLAN, about)
  process.stdout.write(`\n${table}\n`)
  const dir = path.join(__dirname, 'results')
  fs.mkdirSync(dir, { recursive: true })
  if (results.hedging?.rounds !== undefined) {
    const file = path.join(dir, 'hedging-cdf.svg')
    fs.writeFileSync(file, hedgingSvg(results.hedging, PLAN.hedging, about))
    log(`written to ${path.relative(process.cwd(), file)}`)
  }
  if (ONLY === undefined) {
    const file = path.join(dir, `latest-node${process.versions.node.split('.')[0]}.md`)
    fs.writeFileSync(file, table + '\n')
    log(`written to ${path.relative(process.cwd(), file)}`)
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
