'use strict'

// The markdown report of a run, and the SVG of the hedging phase.

const { median } = require('./common')
const { medianOf, ratioOf, ratioToMeanOf, resultsOf } = require('./rounds')
const { cdfSvg } = require('./svg-cdf')

const int = (value) => Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a'
const fixed = (value, digits = 2) => Number.isFinite(value) ? value.toFixed(digits) : 'n/a'
const percent = (value, digits = 1) => Number.isFinite(value) ? `${(100 * value).toFixed(digits)} %` : 'n/a'
const sum = (list, key) => list.reduce((total, result) => total + (result[key] ?? 0), 0)
const cell = (text) => String(text).replace(/\|/g, '\\|')

const CPU_NOTE = '"per CPU-s": calls per CPU-second of the measuring process, as a ratio in the same round. On a shared machine the client often gets ' +
  'only part of its core (client CPU % well under 100): then wall-clock req/s follow the neighbours\' load, while CPU time per call still shows what the client costs.'

/** Over 90 % of a core: the upstream, not the client, set the pace. */
const UPSTREAM_BOUND = 90

function roundsLine (phase, plan) {
  if (phase.sliced === true) {
    return `${plan.generations} generation(s) of fresh processes, one per contender, each warmed up for ${plan.warmupMs / 1000} s, then ${plan.cycles} cycles of one ${plan.sliceMs} ms slice per contender, ` +
      `the order rotating; the processes not measuring wait idle. ${phase.rounds.length} cycles in all; medians over cycles; ratios are medians of the per-cycle ratios.`
  }
  return `${phase.rounds.length} interleaved round(s) of ${plan.durationMs / 1000} s after ${plan.warmupMs / 1000} s of warm-up, each contender in a fresh process, the order rotating; medians over rounds; ratios are medians of the per-round ratios.`
}

function failedLine (phase) {
  const failed = Object.entries(phase.failures ?? {})
  return failed.length === 0 ? [] : ['', ...failed.map(([name, message]) => `- ${name} failed: ${cell(message)}`)]
}

/** The window's counters of one contender, summed over its rounds. */
function statsSum (phase, name, key) {
  return resultsOf(phase, name).reduce((total, result) => total + (result.stats?.[key] ?? 0), 0)
}

function upstreamBoundNote (phase, names) {
  const busiest = Math.max(...names.map((name) => medianOf(phase, name, 'upstreamCpuPercent')).filter(Number.isFinite))
  if (!Number.isFinite(busiest)) return 'Upstream CPU could not be read (no /proc).'
  return busiest > UPSTREAM_BOUND
    ? `**Upstream-bound**: the upstream used up to ${int(busiest)} % of its core, so the client ratios are compressed towards 1.`
    : `The upstream used at most ${int(busiest)} % of its core (median over rounds): not upstream-bound.`
}

function clientSection (phase, plan) {
  const lines = ['## 1. Client throughput and latency', '']
  lines.push(`Concurrency ${plan.concurrency}; every pool 128 connections, pipelining 1; GET / of a small JSON body, read as JSON.`)
  lines.push('"ours": `createHttpClient()` with retry and circuit breaker at their defaults, `(await client.get(\'/\')).json()`; "ours A/A": the same, measured as a separate contender (the noise of the run);')
  lines.push('"ours + ratio rules": the same with `circuitBreaker: { failureRatio: 0.2, slowCallMs: 2_000 }` (the breaker\'s window and the time to headers on every attempt; its cost is taken against the mean of "ours" and "ours A/A" in each round);')
  lines.push('"undici": `Pool.request()` + `body.json()`; "undici dispatch": `Pool.dispatch()` with a minimal handler (chunks collected, `JSON.parse`).')
  lines.push(roundsLine(phase, plan), '')
  lines.push(CPU_NOTE, '')
  lines.push('| contender | req/s | p50 ms | p99 ms | req/s vs undici request | req/s vs undici dispatch | p99 vs request | client CPU µs/call | per CPU-s vs request | per CPU-s vs dispatch | client CPU % | upstream CPU % | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  const names = Object.keys(Object.assign({}, ...phase.rounds))
  for (const name of names) {
    const list = resultsOf(phase, name)
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(ratioOf(phase, name, 'undici', 'rps'))} | ${fixed(ratioOf(phase, name, 'undici dispatch', 'rps'))} | ${fixed(ratioOf(phase, name, 'undici', 'p99'))} | ${fixed(medianOf(phase, name, 'cpuUsPerCall'), 1)} | ${fixed(ratioOf(phase, name, 'undici', 'callsPerCpuSecond'))} | ${fixed(ratioOf(phase, name, 'undici dispatch', 'callsPerCpuSecond'))} | ${int(medianOf(phase, name, 'cpuPercent'))} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} | ${sum(list, 'errors')} |`)
  }
  lines.push('', upstreamBoundNote(phase, names), ...failedLine(phase), '')
  return lines
}

function e2eSection (phase, plan) {
  const lines = ['## 2. End to end through Fastify', '']
  lines.push(`autocannon, ${plan.concurrency} connections, drives GET /proxy of a Fastify app that calls the upstream and returns its JSON. Every variant uses`)
  lines.push('`genReqId: requestIdGenerator()` and gets the same inbound `x-request-id` and `x-request-timeout-ms: 5000`; every variant echoes the id and forwards it upstream.')
  lines.push('"ours": the plugin at its defaults; "ours A/A": the same (noise); "ours + deadline": the plugin with `deadline: true` (the inbound budget read and the ms left forwarded);')
  lines.push('"raw undici": the same route on `Pool.request()`, passing `request.id` by hand.')
  lines.push(roundsLine(phase, plan), '')
  lines.push(CPU_NOTE.replace('measuring process', 'Fastify app').replace('calls', 'requests'), '')
  lines.push('| variant | req/s | p50 ms | p99 ms | req/s vs raw undici | req/s vs ours | app CPU µs/request | per CPU-s vs raw undici | per CPU-s vs ours | app CPU % | upstream CPU % | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const list = resultsOf(phase, name)
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(ratioOf(phase, name, 'raw undici', 'rps'))} | ${fixed(ratioOf(phase, name, 'ours', 'rps'))} | ${fixed(medianOf(phase, name, 'appCpuUsPerRequest'), 1)} | ${fixed(ratioOf(phase, name, 'raw undici', 'requestsPerCpuSecond'))} | ${fixed(ratioOf(phase, name, 'ours', 'requestsPerCpuSecond'))} | ${int(medianOf(phase, name, 'appCpuPercent'))} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} | ${sum(list, 'errors')} |`)
  }
  lines.push('', 'The upstream CPU % here is the upstream process alone; autocannon shares its core (CPU 1).', ...failedLine(phase), '')
  return lines
}

function failFastSection (phase, plan) {
  const lines = ['## 3. Fail-fast: an open circuit', '']
  lines.push('Calls rejected per second by an open breaker (opened by a real refused connection; threshold 1, recovery 10 minutes), batches of 1000')
  lines.push(`settled with Promise.allSettled; only the breaker's own open-circuit error counts. ${phase.rounds.length} round(s) of ${plan.durationMs / 1000} s; medians.`)
  lines.push('Ours keeps retry on at its defaults; cockatiel is its breaker policy alone (its fastest path); opossum at its defaults.', '')
  lines.push('| breaker | rejections/s | ours vs this (same round) | rejection |')
  lines.push('| --- | ---: | ---: | --- |')
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const list = resultsOf(phase, name)
    const unexpected = sum(list, 'unexpected')
    const sample = cell(list[0].sample) + (unexpected > 0 ? ` (${unexpected} other outcomes)` : '')
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'perSecond'))} | ${fixed(ratioOf(phase, 'ours', name, 'perSecond'))} | ${sample} |`)
  }
  lines.push(...failedLine(phase), '')
  return lines
}

function memorySection (runs, plan) {
  const lines = ['## 4. Memory: our client', '']
  lines.push(`heapUsed after global.gc(), concurrency ${plan.concurrency}, after ${int(plan.firstCalls)} calls and after ${int(plan.totalCalls)} calls. The retried run: GET /flaky`)
  lines.push('answers 503 every other time, retries with the budget off and 1 ms backoff, the breaker kept closed; call i passes `timeout: 5000 + (i mod 20000)`.', '')
  lines.push('| scenario | calls | heap first MB | heap last MB | growth MB | calls/s | retries | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const [label, run] of Object.entries(runs)) {
    if (run.error !== undefined) {
      lines.push(`| ${label} | failed | | | | | | ${cell(run.error)} |`)
      continue
    }
    const calls = `${int(run.firstCalls)} → ${int(run.totalCalls)}${run.totalCalls < plan.totalCalls ? ' (time cap)' : ''}`
    lines.push(`| ${label} | ${calls} | ${fixed(run.heapFirstMB)} | ${fixed(run.heapTotalMB)} | ${fixed(run.deltaMB)} | ${int(run.callsPerSecond)} | ${int(run.retries)} | ${run.errors} |`)
  }
  lines.push('')
  return lines
}

function hedgingSection (phase, plan) {
  const base = 'tail, no hedging'
  const lines = ['## 5. Hedging: a heavy-tail upstream', '']
  lines.push(`GET /tail: 2 % of requests answer after 50-200 ms, the rest at once. Concurrency ${plan.concurrency}; our client at its defaults, without hedging`)
  lines.push('(twice: the A/A control) and with `hedge: { delayMs: \'auto\' }` (the p95 of the last 1,000 attempts). Extra upstream requests: hedges and retries')
  lines.push('sent in the window per call started in it. The latency CDF of every round is in [hedging-cdf.svg](hedging-cdf.svg).')
  lines.push('"per CPU-s" is reported, not a target: without hedging most of the 64 workers wait on the tail and the client idles (client CPU %),')
  lines.push('so its CPU time per call is taken at a lighter load; and over HTTP/1.1 each cancelled loser costs its connection, opened again.')
  lines.push(roundsLine(phase, plan), '')
  lines.push('| contender | calls/s | p50 ms | p99 ms | p99.9 ms | p99 vs no hedging | p99.9 vs no hedging | calls/s vs no hedging | per CPU-s vs no hedging | extra upstream requests | hedge wins | client CPU % | upstream CPU % |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const requests = statsSum(phase, name, 'requests')
    const extra = (statsSum(phase, name, 'hedges') + statsSum(phase, name, 'retries')) / requests
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(medianOf(phase, name, 'p999'))} | ${fixed(ratioOf(phase, name, base, 'p99'))} | ${fixed(ratioOf(phase, name, base, 'p999'))} | ${fixed(ratioOf(phase, name, base, 'rps'))} | ${fixed(ratioOf(phase, name, base, 'callsPerCpuSecond'))} | ${percent(extra, 2)} | ${int(statsSum(phase, name, 'hedgeWins'))} | ${int(medianOf(phase, name, 'cpuPercent'))} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} |`)
  }
  lines.push(...failedLine(phase), '')
  return lines
}

function overloadSection (phase, plan) {
  const base = 'overload, unprotected'
  const lines = ['## 6. Overload: an upstream with a capacity of 50', '']
  lines.push('GET /capacity serves 50 requests at once in 20 ms each; above that its latency grows with the square of the overload (20 ms × (inFlight / 50)²)')
  lines.push(`and a share (inFlight − 50) / inFlight of the requests fail with 503. Offered ${plan.concurrency} concurrent callers (4× its capacity); a caller whose call failed`)
  lines.push(`comes back after ${plan.pauseAfterErrorMs} ms. Our client, retry at its defaults, the circuit breaker off in both (an open circuit would stop either for 30 s),`)
  lines.push('`adaptiveConcurrency` off ("unprotected", only the default `maxInFlight: 1000` and the pool\'s 128 connections) or `true`. Goodput: successful (2xx) calls per second; latency of those.')
  lines.push(roundsLine(phase, plan), '')
  lines.push('| contender | goodput calls/s | p50 ms | p99 ms | goodput vs unprotected | p99 vs unprotected | failed calls/s | refused by the limit | retries | upstream peak in-flight | upstream CPU % |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const list = resultsOf(phase, name)
    const failedPerSecond = median(list.map((result) => result.windowErrors / result.seconds))
    const peak = median(list.map((result) => result.upstream?.peakInFlight))
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(ratioOf(phase, name, base, 'rps'))} | ${fixed(ratioOf(phase, name, base, 'p99'))} | ${int(failedPerSecond)} | ${int(statsSum(phase, name, 'overloaded'))} | ${int(statsSum(phase, name, 'retries'))} | ${int(peak)} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} |`)
  }
  lines.push(...failedLine(phase), '')
  return lines
}

function otelSection (phase, plan) {
  const base = 'otel counter off'
  const lines = ['## 7. The OpenTelemetry counter', '']
  lines.push('Both contenders set up the same `@opentelemetry/sdk-metrics` MeterProvider with a periodic reader (1 s, into memory); "on" registers it as the')
  lines.push('global provider, which turns `http.client.resilience.events` on; "off" does not (its A/A twin shows the noise). GET /flaky answers 503 every other')
  lines.push('time and each is retried (budget off, 1 ms backoff, breaker kept closed), so half the calls publish a `retry` event the counter records.')
  lines.push(`Concurrency ${plan.concurrency}. ${roundsLine(phase, plan)}`, '')
  lines.push('| contender | calls/s | p50 ms | p99 ms | calls/s vs off | client CPU µs/call | per CPU-s vs off | events counted in the window | client CPU % | upstream CPU % |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  const names = Object.keys(Object.assign({}, ...phase.rounds))
  for (const name of names) {
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(ratioOf(phase, name, base, 'rps'))} | ${fixed(medianOf(phase, name, 'cpuUsPerCall'), 1)} | ${fixed(ratioOf(phase, name, base, 'callsPerCpuSecond'))} | ${int(statsSum(phase, name, 'counted'))} | ${int(medianOf(phase, name, 'cpuPercent'))} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} |`)
  }
  lines.push('', upstreamBoundNote(phase, names), ...failedLine(phase), '')
  return lines
}

const seconds = (ms) => ms === null ? 'not within 1 h' : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`

function breakerSection (phase, plan) {
  const { settings } = phase
  const window = settings.windowMs
  const lines = ['## 8. Circuit breaker rules (simulated clock)', '']
  lines.push('`benchmarks/breaker-sim.js`: the compiled breaker (`dist/`) with its options resolved as registration does, on a simulated clock; calls arrive evenly,')
  lines.push('each attempt the breaker lets through answers after the upstream\'s latency and is judged then. "consecutive": the defaults (5 failures in a row);')
  lines.push(`"ratio": \`failureRatio: ${settings.ratio.failureRatio}\` added, the rest at its defaults (\`minimumThroughput: 20\`, \`samplingMs: ${window}\`; the consecutive rule stays on, whichever fires first opens);`)
  lines.push('"ratio alone": the same with a `failureThreshold` never reached. No wall clock is measured: the figures are the same on any machine.', '')
  lines.push(`**A partial outage.** ${settings.healthyMs / 1000} s of healthy traffic (the window full of successes), then 30 % of calls fail, independently, each answering in 50 ms.`)
  lines.push(`${plan.seeds} runs per rule and rate (seeded); time from the start of the outage to the circuit opening, and the attempts sent to the failing upstream until then.`, '')
  lines.push(`| rule | calls/s | time to open (median) | slowest | runs open within ${window / 1000} s | attempts sent (median) | most | opened by |`)
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |')
  for (const row of phase.outage) {
    lines.push(`| ${row.rule} | ${int(row.rate)} | ${seconds(row.openedMs.median)} | ${seconds(row.openedMs.max)} | ${row.withinWindow} of ${row.runs} | ${int(row.sent.median)} | ${int(row.sent.max)} | ${row.causes.join(', ')} |`)
  }
  const full = phase.outage.filter((row) => row.rule === 'ratio' && row.rate <= 10).map((row) => Math.round(row.rate * window / 1000))
  for (const n of full) {
    lines.push('', `A full window at ${int(n * 1000 / window)} calls/s holds about ${n} attempts; with 30 % failing independently, fewer than ${Math.round(n * settings.ratio.failureRatio)} of them fail`)
    lines.push(`with probability ${percent(binomialBelow(n, 0.3, Math.ceil(n * settings.ratio.failureRatio)))} (binomial), so about one run in ${int(1 / binomialBelow(n, 0.3, Math.ceil(n * settings.ratio.failureRatio)))} is still under the ratio when its first window is full, whatever the breaker: it opens a little later, as the window moves on.`)
  }
  lines.push('', `**False openings.** 5 % of calls fail, independently, for ${plan.hours} simulated hour(s) from a fresh client; openings (from closed) per hour.`, '')
  lines.push('| rule | 10 calls/s | 100 calls/s | 1,000 calls/s | opened by |')
  lines.push('| --- | ---: | ---: | ---: | --- |')
  for (const rule of [...new Set(phase.falseOpenings.map((row) => row.rule))]) {
    const rows = phase.falseOpenings.filter((row) => row.rule === rule)
    const causes = [...new Set(rows.flatMap((row) => row.causes))]
    lines.push(`| ${rule} | ${rows.map((row) => fixed(row.perHour, 1)).join(' | ')} | ${causes.join(', ') || '—'} |`)
  }
  lines.push('', `**A latency step.** Every answer a 200; latency steps from 50 ms to 2 s after ${settings.healthyMs / 1000} s. \`slowCallMs: ${settings.slow.slowCallMs}\`, the rest at its defaults`)
  lines.push('(`slowCallRatio: 0.5`, `minimumThroughput: 20`). Time from the step to the circuit opening (a slow answer is judged when it comes, 2 s after it was sent).', '')
  lines.push('| calls/s | time to open (median) | slowest | attempts sent after the step (median) | opened by |')
  lines.push('| ---: | ---: | ---: | ---: | --- |')
  for (const row of phase.latencyStep) {
    lines.push(`| ${int(row.rate)} | ${seconds(row.openedMs.median)} | ${seconds(row.openedMs.max)} | ${int(row.sent.median)} | ${row.causes.join(', ')} |`)
  }
  lines.push('', `Simulated in ${fixed(phase.seconds, 1)} s.`, '')
  return lines
}

function streamingSection (phase, plan) {
  const lines = ['## 9. Streaming: NDJSON and Server-Sent Events', '']
  lines.push(`Streams of 16 MB from an upstream in its own process, read back to back for ${plan.durationMs / 1000} s per contender and round, each contender in a fresh process;`)
  lines.push('every NDJSON record is parsed and every event counted. "ours": `client.stream()` with `ndjson()` or `events()` in a `for await` loop;')
  lines.push('undici: `request()` with its body piped through `split2(JSON.parse)` (iterated), or fed through a `TextDecoder` to `eventsource-parser` (a callback per event;')
  lines.push('", for await": the same parser\'s events yielded one per step of a `for await` loop by an async generator, the way `events()` hands them over).')
  lines.push(`${phase.rounds.length} round(s); medians, ratios within a round.`, '')
  lines.push('| contender | items/s | vs its undici baseline (same round) |')
  lines.push('| --- | ---: | ---: |')
  const baseline = { 'ours ndjson': 'undici request + split2', 'ours events': 'undici request + eventsource-parser', 'undici request + eventsource-parser, for await': 'undici request + eventsource-parser' }
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const base = baseline[name]
    lines.push(`| ${name} | ${int(medianOf(phase, name, 'perSecond'))} | ${base === undefined ? '' : `${fixed(ratioOf(phase, name, base, 'perSecond'))}×`} |`)
  }
  const s = phase.slowConsumer
  if (s !== undefined) {
    lines.push('', `**A slow consumer.** One stream of ${s.mb} MB of 1 KiB lines, read by \`lines()\` at a tenth of the rate undici reads it raw`)
    lines.push(`(${fixed(s.rawMBps, 1)} MB/s raw; read at ${fixed(s.readMBps, 1)} MB/s in ${fixed(s.seconds, 1)} s). The process's memory:`, '')
    lines.push('| | rss MB | arrayBuffers MB | heapUsed MB |')
    lines.push('| --- | ---: | ---: | ---: |')
    for (const [label, at] of [['at the commit', s.start], ['peak rss', s.peak], ['at the end', s.end]]) {
      lines.push(`| ${label} | ${fixed(at.rssMB, 1)} | ${fixed(at.arrayBuffersMB, 1)} | ${fixed(at.heapUsedMB, 1)} |`)
    }
  }
  lines.push(...failedLine(phase), '')
  return lines
}

/** P(X < k) for X ~ Binomial(n, p), summed in log space. */
function binomialBelow (n, p, k) {
  let logPmf = n * Math.log(1 - p)
  let total = 0
  for (let i = 0; i < k; i++) {
    total += Math.exp(logPmf)
    logPmf += Math.log((n - i) / (i + 1)) + Math.log(p / (1 - p))
  }
  return total
}

/** One row of the targets table: [what, target, measured, A/A noise, met]. */
function targetRows (results) {
  const rows = []
  const add = (what, target, value, shown, noise, met) => rows.push([what, target, Number.isFinite(value) ? shown : 'n/a', noise, Number.isFinite(value) ? (met ? 'yes' : '**no**') : 'n/a'])
  const aa = (phase, a, b, key) => {
    const value = ratioOf(phase, a, b, key)
    return Number.isFinite(value) ? `A/A ${fixed(value)}` : ''
  }
  const c = results.client
  if (c?.rounds !== undefined) {
    for (const [key, how] of [['rps', 'wall clock'], ['callsPerCpuSecond', 'per CPU-second']]) {
      const request = ratioOf(c, 'ours', 'undici', key)
      const dispatch = ratioOf(c, 'ours', 'undici dispatch', key)
      const noise = aa(c, 'ours A/A', 'ours', key)
      add(`1. throughput vs undici Pool.request (${how})`, '≥ 1.15×', request, `${fixed(request)}×`, noise, request >= 1.15)
      add(`1. throughput vs undici Pool.dispatch (${how})`, '≥ 0.95×', dispatch, `${fixed(dispatch)}×`, noise, dispatch >= 0.95)
    }
    const p99 = ratioOf(c, 'ours', 'undici', 'p99')
    add('1. p99 vs undici Pool.request', '≤ 1.00×', p99, `${fixed(p99)}×`, aa(c, 'ours A/A', 'ours', 'p99'), p99 <= 1)
    for (const [key, how] of [['rps', 'wall clock'], ['callsPerCpuSecond', 'per CPU-second']]) {
      // Against both identical controls (ours and ours A/A), the A/A noise is that of one against the other.
      const cost = 1 - ratioToMeanOf(c, 'ours + ratio rules', ['ours', 'ours A/A'], key)
      const noise = ratioOf(c, 'ours A/A', 'ours', key)
      add(`1. cost of the breaker's ratio and slow-call rules (${how})`, '≤ 2 %', cost, percent(cost), Number.isFinite(noise) ? `A/A ${percent(1 - noise)}` : '', cost <= 0.02)
    }
  }
  const e = results.e2e
  if (e?.rounds !== undefined) {
    for (const [key, how] of [['rps', 'wall clock'], ['requestsPerCpuSecond', 'per CPU-second of the app']]) {
      const raw = ratioOf(e, 'ours', 'raw undici', key)
      const deadline = 1 - ratioOf(e, 'ours + deadline', 'ours', key)
      const noise = aa(e, 'ours A/A', 'ours', key)
      add(`2. end to end vs raw Pool.request (${how})`, '≥ 0.97×', raw, `${fixed(raw)}×`, noise, raw >= 0.97)
      add(`2. cost of \`deadline: true\` (${how})`, '≤ 3 %', deadline, percent(deadline), noise, deadline <= 0.03)
    }
  }
  const f = results.failFast
  if (f?.rounds !== undefined) {
    const peers = ['cockatiel', 'opossum'].map((name) => [name, medianOf(f, name, 'perSecond')]).sort((a, b) => b[1] - a[1])
    const fastest = peers[0][0]
    const value = ratioOf(f, 'ours', fastest, 'perSecond')
    add(`3. open-circuit rejections/s vs the fastest peer (${fastest})`, '≥ 2×', value, `${fixed(value)}×`, aa(f, 'ours A/A', 'ours', 'perSecond'), value >= 2)
  }
  const m = results.memory
  if (m !== undefined && m.error === undefined) {
    for (const [label, run] of Object.entries(m)) {
      add(`4. heap growth, ${label}`, '< 5 MB', run.deltaMB, `${fixed(run.deltaMB)} MB over ${int(run.totalCalls - run.firstCalls)} calls`, '', run.deltaMB < 5)
    }
  }
  const h = results.hedging
  if (h?.rounds !== undefined) {
    const p99 = ratioOf(h, 'tail, hedge auto', 'tail, no hedging', 'p99')
    const p999 = ratioOf(h, 'tail, hedge auto', 'tail, no hedging', 'p999')
    const rps = ratioOf(h, 'tail, hedge auto', 'tail, no hedging', 'rps')
    const perCpu = ratioOf(h, 'tail, hedge auto', 'tail, no hedging', 'callsPerCpuSecond')
    const extra = (statsSum(h, 'tail, hedge auto', 'hedges') + statsSum(h, 'tail, hedge auto', 'retries')) / statsSum(h, 'tail, hedge auto', 'requests')
    add('5. hedging: p99 vs no hedging', '≤ 0.5×', p99, `${fixed(p99)}× (p99.9: ${fixed(p999)}×)`, aa(h, 'tail, no hedging A/A', 'tail, no hedging', 'p99'), p99 <= 0.5)
    add('5. hedging: extra upstream requests', '≤ 5 %', extra, percent(extra, 2), '', extra <= 0.05)
    add('5. hedging: throughput vs no hedging (wall clock)', '≥ 0.95×', rps, `${fixed(rps)}×`, aa(h, 'tail, no hedging A/A', 'tail, no hedging', 'rps'), rps >= 0.95)
    // Reported, not a target: without hedging, most workers wait on the tail and the client idles,
    // so its CPU time per call is taken at a lighter load; each cancelled loser also costs a new connection.
    rows.push(['5. hedging: throughput vs no hedging (per CPU-second; reported)', '—', Number.isFinite(perCpu) ? `${fixed(perCpu)}×` : 'n/a', aa(h, 'tail, no hedging A/A', 'tail, no hedging', 'callsPerCpuSecond'), '—'])
  }
  const o = results.overload
  if (o?.rounds !== undefined) {
    const goodput = ratioOf(o, 'overload, adaptive', 'overload, unprotected', 'rps')
    const p99 = ratioOf(o, 'overload, adaptive', 'overload, unprotected', 'p99')
    add('6. overload: goodput, adaptive vs unprotected', '≥ 1.5×', goodput, `${fixed(goodput)}×`, '', goodput >= 1.5)
    add('6. overload: p99 of successes, adaptive vs unprotected', '≤ 0.5×', p99, `${fixed(p99)}×`, '', p99 <= 0.5)
  }
  const t = results.otel
  if (t?.rounds !== undefined) {
    for (const [key, how] of [['rps', 'wall clock'], ['callsPerCpuSecond', 'per CPU-second']]) {
      const cost = 1 - ratioOf(t, 'otel counter on', 'otel counter off', key)
      const noise = ratioOf(t, 'otel counter off A/A', 'otel counter off', key)
      add(`7. cost of the OpenTelemetry counter (${how})`, '≤ 3 %', cost, percent(cost), Number.isFinite(noise) ? `A/A ${percent(1 - noise)}` : '', cost <= 0.03)
    }
  }
  const st = results.streaming
  if (st?.rounds !== undefined) {
    const ndjson = ratioOf(st, 'ours ndjson', 'undici request + split2', 'perSecond')
    const events = ratioOf(st, 'ours events', 'undici request + eventsource-parser', 'perSecond')
    add('9. ndjson() vs undici request() + split2 (records/s)', '≥ 1.2×', ndjson, `${fixed(ndjson)}×`, '', ndjson >= 1.2)
    add('9. events() vs undici request() + eventsource-parser (events/s)', '≥ 1.0×', events, `${fixed(events)}×`, '', events >= 1.0)
    const loop = ratioOf(st, 'ours events', 'undici request + eventsource-parser, for await', 'perSecond')
    add('9. events() vs the same parser in a for await loop (events/s)', '≥ 1.0×', loop, `${fixed(loop)}×`, '', loop >= 1.0)
    const s = st.slowConsumer
    if (s !== undefined) {
      const growth = s.end.rssMB - s.start.rssMB
      add(`9. slow consumer over ${s.mb} MB: rss growth, commit to end`, '< 32 MB', growth, `${fixed(growth, 1)} MB (arrayBuffers ${fixed(s.start.arrayBuffersMB, 1)} → ${fixed(s.end.arrayBuffersMB, 1)} MB)`, '', growth < 32)
    }
  }
  const b = results.breaker
  if (b?.outage !== undefined) {
    const window = b.settings.windowMs
    const ratio = b.outage.filter((row) => row.rule === 'ratio')
    const within = ratio.reduce((total, row) => total + row.withinWindow, 0)
    const runs = ratio.reduce((total, row) => total + row.runs, 0)
    const slowest = Math.max(...ratio.map((row) => row.openedMs.max ?? Infinity))
    add(`8. ratio rule at 30 % failures: opens within its first full window (${window / 1000} s)`, 'every run', within, `${within} of ${runs} runs at 10, 100 and 1,000 calls/s; slowest ${seconds(Number.isFinite(slowest) ? slowest : null)}`, '', within === runs)
    const alone = b.falseOpenings.filter((row) => row.rule === 'ratio alone')
    const falseOpens = alone.reduce((total, row) => total + row.opens, 0)
    add('8. ratio rule at 5 % failures: false openings', '0', falseOpens, `${falseOpens} in ${b.settings.hours} h at each of 10, 100 and 1,000 calls/s`, '', falseOpens === 0)
    const step = Math.max(...b.latencyStep.map((row) => row.openedMs.max ?? Infinity))
    add(`8. slow-call rule: opens within one window (${window / 1000} s) of a 50 ms → 2 s step`, `≤ ${window / 1000} s`, Number.isFinite(step) ? step : NaN, `slowest ${seconds(step)}`, '', step <= window)
  }
  const bodies = results.bodies
  if (bodies?.rounds !== undefined) {
    for (const [ours, theirs] of BODY_PAIRS) {
      const value = ratioOf(bodies, ours, theirs, 'rps')
      add(`10. ${ours} vs ${theirs} request() (wall clock)`, '≥ 0.95×', value, `${fixed(value)}×`, '', value >= 0.95)
    }
  }
  return rows
}

/** Our form and multipart calls against undici request() with the same body, pair by pair. */
const BODY_PAIRS = [['ours form', 'undici form'], ['ours multipart', 'undici multipart']]

function bodiesSection (phase, plan) {
  const lines = ['## 10. Request bodies: form and multipart', '']
  lines.push(`Concurrency ${plan.concurrency}; every pool 128 connections, pipelining 1; POST / with a body, the small JSON answer read as JSON.`)
  lines.push('"form": a Stripe-style form of five keys, one an array (`form: {...}` for ours; `URLSearchParams` text and its content type for undici `Pool.request()`);')
  lines.push('"multipart": a field and a 4 KiB file in one undici `FormData` (undici 7\'s `request()` refuses Node\'s global one), encoded per call by form-data-encoder for ours and by undici for undici.')
  lines.push(roundsLine(phase, plan), '')
  lines.push(CPU_NOTE, '')
  lines.push('| contender | req/s | p50 ms | p99 ms | req/s vs undici | per CPU-s vs undici | client CPU µs/call | client CPU % | upstream CPU % | errors |')
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const [ours, theirs] of BODY_PAIRS) {
    for (const name of [ours, theirs]) {
      const base = name === ours ? theirs : name
      lines.push(`| ${name} | ${int(medianOf(phase, name, 'rps'))} | ${fixed(medianOf(phase, name, 'p50'))} | ${fixed(medianOf(phase, name, 'p99'))} | ${fixed(ratioOf(phase, name, base, 'rps'))} | ${fixed(ratioOf(phase, name, base, 'callsPerCpuSecond'))} | ${fixed(medianOf(phase, name, 'cpuUsPerCall'), 1)} | ${int(medianOf(phase, name, 'cpuPercent'))} | ${int(medianOf(phase, name, 'upstreamCpuPercent'))} | ${sum(resultsOf(phase, name), 'errors')} |`)
    }
  }
  lines.push('', upstreamBoundNote(phase, BODY_PAIRS.flat()), ...failedLine(phase), '')
  return lines
}

const SECTIONS = {
  client: clientSection,
  e2e: e2eSection,
  failFast: failFastSection,
  memory: memorySection,
  hedging: hedgingSection,
  overload: overloadSection,
  otel: otelSection,
  breaker: breakerSection,
  streaming: streamingSection,
  bodies: bodiesSection,
  rateLimit: require('./rate-limit').rateLimitSection
}

function report (results, plan, about) {
  const lines = []
  lines.push(`# Benchmark results${about.quick ? ' (BENCH_QUICK=1 smoke run: short rounds, not for comparison)' : ''}`, '')
  lines.push(`- Date: ${about.date}`)
  lines.push(`- Node.js ${about.node}`)
  lines.push(`- CPU: ${about.cpu}`)
  lines.push(`- Pinning (taskset): ${about.pinning}`)
  lines.push(`- Command: \`${about.command}\` (${Math.round(about.seconds)} s)`)
  lines.push(`- Load average: ${about.load}`)
  lines.push('- **A shared VM**: the host\'s other guests come and go during a run, and a process\'s speed with them. Read the ratios (both sides measured in the same round)')
  lines.push('  and the A/A controls (two identical contenders: their ratio is the noise), not the absolute req/s.', '')
  const rows = targetRows(results)
  if (rows.length > 0) {
    lines.push('## Targets', '')
    lines.push('| what | target | measured | noise (A/A) | met |')
    lines.push('| --- | --- | --- | --- | --- |')
    for (const row of rows) lines.push(`| ${row.map(cell).join(' | ')} |`)
    lines.push('')
  }
  for (const [name, section] of Object.entries(SECTIONS)) {
    const result = results[name]
    if (result === undefined) continue
    if (result.error !== undefined) {
      lines.push(`## ${name}: failed`, '', cell(result.error), '')
      continue
    }
    lines.push(...section(result, plan[name]))
  }
  return lines.join('\n')
}

/** The hedging phase's latency CDFs: every round thin, the median round (by p99) bold. */
function hedgingSvg (phase, plan, about) {
  const series = []
  for (const name of Object.keys(Object.assign({}, ...phase.rounds))) {
    const list = resultsOf(phase, name).filter((result) => result.cdf !== undefined)
    if (list.length === 0) continue
    const byP99 = [...list].sort((a, b) => a.p99 - b.p99)
    const middle = byP99[(byP99.length - 1) >> 1]
    series.push({ label: `${name} (p99 ${fixed(middle.p99)} ms, p99.9 ${fixed(middle.p999)} ms)`, rounds: list.map((result) => result.cdf), median: middle.cdf })
  }
  return cdfSvg(
    'Hedging on a heavy-tail upstream: latency CDF',
    `2 % of requests take 50-200 ms; concurrency ${plan.concurrency}; ${phase.rounds.length} round(s) of ${plan.durationMs / 1000} s; Node.js ${about.node.split(' ')[0]}; ${about.date.slice(0, 10)}; shared machine`,
    series
  )
}

module.exports = { report, hedgingSvg }
