'use strict'

// The rateLimit phase: instances of a fleet (test/fixtures/rate-limit-fleet.js,
// one Node process each, on the built package) against one counting upstream,
// with their limit shared through a real redis-server, or each its own.
// Measured: the rate the fleet achieved against its target and its worst
// one-second window; Redis commands per call in lease mode (INFO
// commandstats); what a limit that never binds costs; and requests that
// reached the upstream during a pause asked by one 429 with Retry-After: 2.

const { execFileSync, spawn } = require('node:child_process')
const { once } = require('node:events')
const fs = require('node:fs')
const http = require('node:http')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { median } = require('./common')

const FIXTURE = path.join(__dirname, '..', 'test', 'fixtures', 'rate-limit-fleet.js')
const PER_SECOND = 500
// A small bucket, so that the first second's burst does not hide the rate.
const BURST = 50

async function freePort () {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function startRedis () {
  let binary
  try {
    binary = execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim()
  } catch {
    throw new Error('redis-server is not installed: apt-get update && apt-get install -y redis-server')
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'frh-bench-redis-'))
  const port = await freePort()
  const child = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'ignore'] })
  let output = ''
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), 10_000)
    child.stdout.on('data', (chunk) => {
      output += chunk
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  child.stdout.resume()
  return {
    port,
    cli: (...args) => execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }),
    async stop () {
      child.kill('SIGTERM')
      await once(child, 'exit')
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** Evals run by the server so far (EVALSHA and EVAL), from INFO commandstats. */
function evals (redis) {
  let calls = 0
  for (const match of redis.cli('INFO', 'commandstats').matchAll(/^cmdstat_(evalsha|eval):calls=(\d+)/gm)) calls += Number(match[2])
  return calls
}

/** A counting upstream; `answer(index)` may return a status and headers instead of 200. */
async function countingUpstream (answer = () => null) {
  const hits = []
  const server = http.createServer((req, res) => {
    hits.push(Date.now())
    const special = answer(hits.length - 1)
    if (special !== null) {
      res.writeHead(special.status, { ...special.headers, 'content-length': 0 })
      res.end()
      return
    }
    res.end('ok')
  })
  server.keepAliveTimeout = 60_000
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${server.address().port}`, hits, close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve) }) }
}

/** Runs `instances` processes of the fleet together for `durationMs`; their reports. */
async function runFleet (instances, env, durationMs) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'frh-bench-fleet-'))
  try {
    const children = Array.from({ length: instances }, () => {
      const child = spawn(process.execPath, [FIXTURE], { env: { PATH: process.env.PATH, ...env, READY_DIR: dir, DURATION_MS: String(durationMs) }, stdio: ['ignore', 'pipe', 'inherit'] })
      let stdout = ''
      child.stdout.on('data', (chunk) => { stdout += chunk })
      return once(child, 'exit').then(([code]) => {
        if (code !== 0) throw new Error(`a fleet instance exited with ${code}`)
        return JSON.parse(stdout)
      })
    })
    for (let i = 0; i < 3_000 && fs.readdirSync(dir).length < instances; i++) await new Promise((resolve) => setTimeout(resolve, 10))
    // Written aside and renamed: an instance must never read a half-written start time.
    fs.writeFileSync(path.join(dir, 'go.tmp'), String(Date.now() + 200))
    fs.renameSync(path.join(dir, 'go.tmp'), path.join(dir, 'go'))
    return await Promise.all(children)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** Calls in the busiest sliding second. */
function worstSecond (hits) {
  let worst = 0
  for (let i = 0, j = 0; j < hits.length; j++) {
    while (hits[j] - hits[i] >= 1_000) i++
    worst = Math.max(worst, j - i + 1)
  }
  return worst
}

function percentile (values, p) {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

async function rateLimitPhase (plan, log) {
  const redis = await startRedis()
  const result = { perSecond: PER_SECOND, burst: BURST, durationMs: plan.durationMs, fleet: [], costMs: plan.costMs }
  try {
    let key = 0
    for (const instances of [1, 2, 4]) {
      for (const shared of [true, false]) {
        const upstream = await countingUpstream()
        const before = evals(redis)
        const env = { UPSTREAM_URL: upstream.url, PER_SECOND: String(PER_SECOND), BURST: String(BURST), CONCURRENCY: '16', START_AT: '0' }
        if (shared) Object.assign(env, { REDIS_PORT: String(redis.port), KEY: `frh:bench:${key++}` })
        const reports = await runFleet(instances, env, plan.durationMs)
        await upstream.close()
        const hits = upstream.hits
        const seconds = plan.durationMs / 1000
        const row = {
          instances,
          shared,
          calls: hits.length,
          achieved: hits.length / (PER_SECOND * seconds),
          // The first second holds the bucket's burst: the rate after it.
          steady: seconds > 1 ? hits.filter((at) => at >= hits[0] + 1_000).length / (PER_SECOND * (seconds - 1)) : NaN,
          worstSecond: worstSecond(hits) / PER_SECOND,
          refused: reports.reduce((sum, report) => sum + report.refused, 0),
          commandsPerCall: shared ? (evals(redis) - before) / hits.length : undefined
        }
        result.fleet.push(row)
        log(`rateLimit: ${instances} instance(s), ${shared ? 'shared through Redis' : 'each its own limit'}: ${(row.achieved * 100).toFixed(1)} % of ${PER_SECOND}/s, worst second ${(row.worstSecond * 100).toFixed(1)} %` +
          (shared ? `, ${row.commandsPerCall.toFixed(3)} Redis commands per call` : ''))
      }
    }

    // Cost when set but never binding: one process, rounds alternating, the upstream answering at once.
    const costRuns = { none: [], local: [], fleetNone: [], fleet: [] }
    for (let round = 0; round < plan.costRounds; round++) {
      for (const [name, extra] of [['none', { NO_LIMIT: '1' }], ['local', {}], ['fleetNone', { NO_LIMIT: '1', LATENCIES: '1' }], ['fleet', { REDIS_PORT: String(redis.port), KEY: `frh:bench:cost${round}`, LATENCIES: '1' }]]) {
        const upstream = await countingUpstream()
        const [report] = await runFleet(1, { UPSTREAM_URL: upstream.url, PER_SECOND: '1000000000', CONCURRENCY: '32', ...extra }, plan.costMs)
        await upstream.close()
        costRuns[name].push({ rps: report.sent / (plan.costMs / 1000), p50: percentile(report.latencies ?? [], 0.5), p99: percentile(report.latencies ?? [], 0.99) })
      }
    }
    const rps = (name) => median(costRuns[name].map((run) => run.rps))
    const at = (name, key) => median(costRuns[name].map((run) => run[key]))
    result.cost = {
      rounds: plan.costRounds,
      noLimitRps: rps('none'),
      localRps: rps('local'),
      localRatio: rps('local') / rps('none'),
      fleetAddedP50Ms: at('fleet', 'p50') - at('fleetNone', 'p50'),
      fleetAddedP99Ms: at('fleet', 'p99') - at('fleetNone', 'p99')
    }
    log(`rateLimit: a limit that never binds: ${(result.cost.localRatio * 100).toFixed(1)} % of the throughput without one (local); fleet adds p50 ${result.cost.fleetAddedP50Ms.toFixed(2)} ms, p99 ${result.cost.fleetAddedP99Ms.toFixed(2)} ms`)

    // One 429 with Retry-After: 2, two seconds in, to one of four instances.
    let pausedAt = 0
    const upstream = await countingUpstream((index) => {
      if (index !== Math.round(PER_SECOND * plan.pauseAfterS)) return null
      pausedAt = Date.now()
      return { status: 429, headers: { 'retry-after': '2' } }
    })
    await runFleet(4, { UPSTREAM_URL: upstream.url, PER_SECOND: String(PER_SECOND), BURST: String(BURST), CONCURRENCY: '16', REDIS_PORT: String(redis.port), KEY: 'frh:bench:pause' }, plan.pauseRunMs)
    await upstream.close()
    result.pause = {
      pausedAt: pausedAt > 0,
      // Every instance learns of the pause within 100 ms of the one that got the 429 telling Redis.
      duringPause: upstream.hits.filter((at) => at > pausedAt + 100 && at < pausedAt + 2_000).length,
      firstHundredMs: upstream.hits.filter((at) => at > pausedAt && at <= pausedAt + 100).length,
      after: upstream.hits.filter((at) => at >= pausedAt + 2_000).length
    }
    log(`rateLimit: after a 429 with Retry-After: 2, ${result.pause.duringPause} request(s) reached the upstream from 100 ms on during the pause (${result.pause.firstHundredMs} in its first 100 ms)`)
  } finally {
    await redis.stop()
  }
  return result
}

function rateLimitSection (phase) {
  const lines = ['## Rate limits (a fleet through Redis)', '']
  lines.push('`benchmarks/rate-limit.js`: 1, 2 and 4 Node processes (`test/fixtures/rate-limit-fleet.js`, 16 calls at a time each) against one counting upstream,')
  lines.push(`\`rateLimit: { perSecond: ${phase.perSecond}, burst: ${phase.burst} }\` shared through a real redis-server (the default lease, ${Math.max(1, Math.floor(phase.perSecond / 50))} tokens), or each its own, for ${phase.durationMs / 1000} s.`)
  lines.push('"achieved": calls over perSecond × duration (the first second holds the burst); "steady": the same after the first second; "worst second": the busiest sliding second over perSecond.', '')
  lines.push('| instances | limit | calls | achieved | steady | worst second | Redis commands per call |')
  lines.push('| --- | --- | --- | --- | --- | --- | --- |')
  for (const row of phase.fleet) {
    lines.push(`| ${row.instances} | ${row.shared ? 'shared (Redis)' : 'each its own'} | ${row.calls} | ${(row.achieved * 100).toFixed(1)} % | ${Number.isFinite(row.steady) ? `${(row.steady * 100).toFixed(1)} %` : ''} | ${(row.worstSecond * 100).toFixed(1)} % | ${row.commandsPerCall === undefined ? '' : row.commandsPerCall.toFixed(3)} |`)
  }
  if (phase.cost !== undefined) {
    const c = phase.cost
    lines.push('', `A limit that never binds (\`perSecond: 1e9\`), one process, 32 calls at a time, ${c.rounds} round(s) of ${phase.costMs / 1000} s, medians:`)
    lines.push(`local ${Math.round(c.localRps)} calls/s against ${Math.round(c.noLimitRps)} without a limit (${(c.localRatio * 100).toFixed(1)} %); shared through Redis, p50 +${c.fleetAddedP50Ms.toFixed(2)} ms, p99 +${c.fleetAddedP99Ms.toFixed(2)} ms.`)
  }
  if (phase.pause !== undefined) {
    const p = phase.pause
    lines.push('', `One 429 with \`Retry-After: 2\` to one of four instances: ${p.duringPause} request(s) reached the upstream from 100 ms after it until the pause ended`)
    lines.push(`(${p.firstHundredMs} in its first 100 ms, sent before the others learnt of it), ${p.after} after it.`)
  }
  lines.push('')
  return lines
}

module.exports = { rateLimitPhase, rateLimitSection }
