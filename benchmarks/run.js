'use strict'

// npm run bench            the full run (about 4 minutes, bounded under 5)
// BENCH_QUICK=1 npm run bench   a smoke run of about a minute
// Prints one markdown results table and writes it to benchmarks/results/latest.md.

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const contenders = require('./contenders')
const { runE2E } = require('./e2e')
const { CLIENT_CPU, SERVER_CPU, canPin, startChild, runChild, stopChild, median } = require('./common')

const QUICK = process.env.BENCH_QUICK === '1'
// Read before the orchestrator pins itself to one CPU.
const AVAILABLE_CPUS = os.availableParallelism()
const CONCURRENCY = 64
const CONNECTIONS = 128

// Each phase has a time budget; a phase that runs out of it stops early and
// says so, which keeps the whole run bounded on a slow or busy machine.
const PLAN = QUICK
  ? {
      client: { rounds: 2, warmupMs: 300, durationMs: 700, budgetMs: 35_000 },
      e2e: { rounds: 1, warmupMs: 500, durationMs: 2_000, budgetMs: 10_000 },
      failFast: { rounds: 1, warmupMs: 100, durationMs: 500, budgetMs: 8_000 },
      memory: { firstCalls: 10_000, totalCalls: 50_000, capMs: 10_000 }
    }
  : {
      client: { rounds: 5, warmupMs: 500, durationMs: 2_000, budgetMs: 140_000 },
      e2e: { rounds: 3, warmupMs: 1_000, durationMs: 4_000, budgetMs: 40_000 },
      failFast: { rounds: 3, warmupMs: 200, durationMs: 1_000, budgetMs: 20_000 },
      memory: { firstCalls: 10_000, totalCalls: 200_000, capMs: 35_000 }
    }
// The memory runs take what is left of this, up to their own cap.
const TOTAL_BUDGET_MS = QUICK ? 75_000 : 285_000

const FAIL_FAST = ['ours', 'cockatiel', 'opossum', 'Promise.reject (reference)']

/** Whether another round, as long as the average so far, still ends within the phase's budget. */
function roomForRound (started, round, budgetMs) {
  if (round === 0) return true
  const elapsed = Date.now() - started
  return elapsed + elapsed / round <= budgetMs
}

function log (line) {
  process.stderr.write(`[bench] ${line}\n`)
}

/** Rotates `list` by `round`, so that no contender always runs first or last. */
function rotate (list, round) {
  const shift = round % list.length
  return [...list.slice(shift), ...list.slice(0, shift)]
}

async function deadOrigin () {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

async function clientRounds (origin) {
  const { rounds, warmupMs, durationMs, budgetMs } = PLAN.client
  const names = Object.keys(contenders)
  const results = Object.fromEntries(names.map((name) => [name, []]))
  const failures = {}
  const started = Date.now()
  let done = 0
  for (let round = 0; round < rounds && roomForRound(started, round, budgetMs); round++) {
    const roundResults = {}
    for (const name of rotate(names, round)) {
      const args = [name, origin, String(CONCURRENCY), String(CONNECTIONS), String(warmupMs), String(durationMs)]
      try {
        roundResults[name] = await runChild('client-load.js', args, { cpu: CLIENT_CPU, timeoutMs: warmupMs + durationMs + 20_000 })
        log(`client round ${round + 1}/${rounds} ${name}: ${Math.round(roundResults[name].rps)} req/s, p99 ${roundResults[name].p99.toFixed(2)} ms`)
      } catch (error) {
        failures[name] = error.message.split('\n').slice(0, 2).join(' ')
        log(`client round ${round + 1}/${rounds} ${name}: FAILED ${failures[name]}`)
      }
    }
    const base = roundResults.undici
    for (const name of names) {
      const result = roundResults[name]
      if (result === undefined) continue
      result.rpsRatio = base === undefined ? NaN : result.rps / base.rps
      result.p99Ratio = base === undefined ? NaN : result.p99 / base.p99
      results[name].push(result)
    }
    done++
  }
  return { results, failures, rounds: done }
}

async function failFastRounds (origin) {
  const { rounds, warmupMs, durationMs, budgetMs } = PLAN.failFast
  const results = Object.fromEntries(FAIL_FAST.map((name) => [name, []]))
  const failures = {}
  const started = Date.now()
  let done = 0
  for (let round = 0; round < rounds && roomForRound(started, round, budgetMs); round++) {
    for (const name of rotate(FAIL_FAST, round)) {
      try {
        const result = await runChild('fail-fast.js', [name, origin, String(warmupMs), String(durationMs)], { cpu: CLIENT_CPU, timeoutMs: warmupMs + durationMs + 15_000 })
        results[name].push(result)
        log(`fail-fast round ${round + 1}/${rounds} ${name}: ${Math.round(result.perSecond)} rejections/s (${result.sample})`)
      } catch (error) {
        failures[name] = error.message.split('\n').slice(0, 2).join(' ')
        log(`fail-fast ${name}: FAILED ${failures[name]}`)
      }
    }
    done++
  }
  return { results, failures, rounds: done }
}

async function memoryRuns (origin, deadline) {
  const { firstCalls, totalCalls } = PLAN.memory
  const runs = {}
  const scenarios = [['all calls succeed', '/'], ['50 % answer 503, retried', '/flaky']]
  for (const [index, [label, urlPath]] of scenarios.entries()) {
    // Each run also needs a few seconds to start and to collect garbage.
    const left = (deadline - Date.now()) / (scenarios.length - index) - 4_000
    const capMs = Math.round(Math.max(3_000, Math.min(PLAN.memory.capMs, left)))
    const args = [origin, urlPath, String(CONCURRENCY), String(firstCalls), String(totalCalls), String(capMs)]
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

const int = (value) => Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a'
const fixed = (value, digits = 2) => Number.isFinite(value) ? value.toFixed(digits) : 'n/a'
const pick = (list, key) => median(list.map((result) => result[key]))

function report ({ client, e2e, failFast, memory, startedAt, seconds }) {
  const cpus = os.cpus()
  const lines = []
  lines.push(`# Benchmark results${QUICK ? ' (BENCH_QUICK=1 smoke run: short rounds, not for comparison)' : ''}`, '')
  lines.push(`- Date: ${startedAt.toISOString()}`)
  lines.push(`- Node.js ${process.version} on ${os.platform()} ${os.arch()}`)
  lines.push(`- CPU: ${cpus[0]?.model ?? 'unknown'}, ${cpus.length} cores (${AVAILABLE_CPUS} available to the bench)`)
  lines.push(canPin
    ? `- Pinning (taskset): clients and the Fastify app on CPU ${CLIENT_CPU}; upstream, autocannon and the orchestrator on CPU ${SERVER_CPU}`
    : '- Pinning: none (taskset is missing or fewer than 2 cores); processes run unpinned')
  lines.push(`- Command: \`${QUICK ? 'BENCH_QUICK=1 ' : ''}npm run bench\` (${Math.round(seconds)} s)`, '')

  const c = PLAN.client
  lines.push('## Client throughput and latency', '')
  lines.push(`Concurrency ${CONCURRENCY}; every pool ${CONNECTIONS} connections, pipelining 1; GET of a small JSON body, read with .json().`)
  lines.push(`${client.rounds} interleaved round(s) of ${c.durationMs / 1000} s (after ${c.warmupMs / 1000} s warm-up), each contender in a fresh process; medians.`)
  lines.push('Ratios are medians of the per-round ratios to raw undici in the same round. Client CPU % (of one core) under')
  lines.push('about 95 means the client waited on the upstream or on a busy machine, and the ratios then understate the differences.', '')
  lines.push('| contender | req/s | p50 ms | p99 ms | req/s vs undici | p99 vs undici | client CPU % | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const [name, list] of Object.entries(client.results)) {
    if (list.length === 0) {
      lines.push(`| ${name} | failed | | | | | | ${client.failures[name] ?? ''} |`)
      continue
    }
    const errors = list.reduce((sum, result) => sum + result.errors, 0)
    lines.push(`| ${name} | ${int(pick(list, 'rps'))} | ${fixed(pick(list, 'p50'))} | ${fixed(pick(list, 'p99'))} | ${fixed(pick(list, 'rpsRatio'))} | ${fixed(pick(list, 'p99Ratio'))} | ${int(pick(list, 'cpuPercent'))} | ${errors} |`)
  }
  lines.push('')

  const e = PLAN.e2e
  lines.push('## End to end through Fastify', '')
  lines.push(`autocannon, ${CONCURRENCY} connections, ${e2e.rounds ?? 0} round(s) of ${e.durationMs / 1000} s after ${e.warmupMs / 1000} s warm-up; GET /proxy calls the upstream.`)
  lines.push('"ours": our plugin with request-id propagation and genReqId: requestIdGenerator(); "raw undici": a plain Fastify app with an undici Pool.', '')
  lines.push('| route | req/s | p50 ms | p99 ms | req/s vs raw undici | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: |')
  if (e2e.error !== undefined) {
    lines.push(`| failed | | | | | ${e2e.error} |`)
  } else {
    const base = pick(e2e.results.undici, 'rps')
    for (const [variant, label] of [['ours', 'ours'], ['undici', 'raw undici']]) {
      const list = e2e.results[variant]
      const errors = list.reduce((sum, result) => sum + result.errors, 0)
      lines.push(`| ${label} | ${int(pick(list, 'rps'))} | ${fixed(pick(list, 'p50'))} | ${fixed(pick(list, 'p99'))} | ${fixed(pick(list, 'rps') / base)} | ${errors} |`)
    }
  }
  lines.push('')

  const f = PLAN.failFast
  lines.push('## Fail-fast: an open circuit', '')
  lines.push(`Calls rejected per second by an open breaker (opened by a refused connection), batches of 1000 with Promise.allSettled; ${failFast.rounds} round(s) of ${f.durationMs / 1000} s; medians.`, '')
  lines.push('| breaker | rejections/s | ours vs this | rejection |')
  lines.push('| --- | ---: | ---: | --- |')
  const ours = pick(failFast.results.ours, 'perSecond')
  for (const [name, list] of Object.entries(failFast.results)) {
    if (list.length === 0) {
      lines.push(`| ${name} | failed | | ${failFast.failures[name] ?? ''} |`)
      continue
    }
    const unexpected = list.reduce((sum, result) => sum + result.unexpected, 0)
    const sample = list[0].sample.replace(/\|/g, '\\|') + (unexpected > 0 ? ` (${unexpected} other outcomes)` : '')
    lines.push(`| ${name} | ${int(pick(list, 'perSecond'))} | ${fixed(ours / pick(list, 'perSecond'))} | ${sample} |`)
  }
  lines.push('')

  lines.push('## Memory: our client', '')
  lines.push(`heapUsed after global.gc(), concurrency ${CONCURRENCY}, after ${int(PLAN.memory.firstCalls)} calls and after ${int(PLAN.memory.totalCalls)} calls; retried run: budget off, backoffInitialMs 1.`, '')
  lines.push('| scenario | calls | heap first MB | heap last MB | delta MB | calls/s | retries | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const [label, run] of Object.entries(memory)) {
    if (run.error !== undefined) {
      lines.push(`| ${label} | failed | | | | | | ${run.error} |`)
      continue
    }
    const calls = `${int(run.firstCalls)} → ${int(run.totalCalls)}${run.totalCalls < PLAN.memory.totalCalls ? ' (time cap)' : ''}`
    lines.push(`| ${label} | ${calls} | ${fixed(run.heapFirstMB)} | ${fixed(run.heapTotalMB)} | ${fixed(run.deltaMB)} | ${int(run.callsPerSecond)} | ${int(run.retries)} | ${run.errors} |`)
  }
  lines.push('')
  return lines.join('\n')
}

async function main () {
  const startedAt = new Date()
  // The orchestrator is idle while a child measures, but autocannon runs in it: keep it off the client's CPU.
  if (canPin) spawnSync('taskset', ['-cp', SERVER_CPU, String(process.pid)], { stdio: 'ignore' })
  log(`${QUICK ? 'quick' : 'full'} run; ${canPin ? 'pinned with taskset' : 'unpinned (no taskset or a single core)'}`)

  const upstream = await startChild('upstream.js', [], { cpu: SERVER_CPU })
  const origin = `http://127.0.0.1:${upstream.message.port}`
  try {
    const client = await clientRounds(origin)
    let e2e
    try {
      const e = PLAN.e2e
      const rounds = Math.max(1, Math.min(e.rounds, Math.floor(e.budgetMs / (2 * (e.warmupMs + e.durationMs + 1_000)))))
      e2e = { rounds, results: await runE2E(origin, { ...e, rounds, concurrency: CONCURRENCY, connections: CONNECTIONS }, log) }
    } catch (error) {
      e2e = { error: error.message.split('\n').slice(0, 2).join(' ') }
      log(`e2e: FAILED ${e2e.error}`)
    }
    const failFast = await failFastRounds(await deadOrigin())
    const memory = await memoryRuns(origin, startedAt.getTime() + TOTAL_BUDGET_MS)
    const table = report({ client, e2e, failFast, memory, startedAt, seconds: (Date.now() - startedAt) / 1000 })
    process.stdout.write(`\n${table}\n`)
    const dir = path.join(__dirname, 'results')
    fs.mkdirSync(dir, { recursive: true })
    fs.writeFileSync(path.join(dir, 'latest.md'), table + '\n')
    log(`written to ${path.relative(process.cwd(), path.join(dir, 'latest.md'))}`)
  } finally {
    await stopChild(upstream.child)
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
