'use strict'

// The breaker phase: simulated upstreams on a simulated clock, through the
// real compiled breaker (dist/lib/policies/circuit-breaker.js) with its
// options resolved as registration resolves them. Calls arrive evenly at a
// given rate; each attempt the breaker lets through answers after the
// upstream's latency, and the breaker hears its verdict then, as a client's
// breaker does. No socket and no timer: hours of traffic take seconds.
//
// node benchmarks/breaker-sim.js [seeds] [hours]   prints the phase's result as JSON
// (benchmarks/run.js runs it as the `breaker` phase, and its report has the table).

const { CircuitBreaker, Permit, Verdict } = require('../dist/lib/policies/circuit-breaker')
const { resolveBreaker } = require('../dist/lib/options/breaker')
const { answer, answerErrors } = require('./common')

const RATES = [10, 100, 1_000]
/** The one option the ratio rule needs; the rest (minimumThroughput 20, samplingMs 10 s) at their defaults. */
const RATIO_RULE = { failureRatio: 0.2 }
/** A caller with a 1 s budget: answers slower than that count as slow. */
const SLOW_RULE = { slowCallMs: 1_000 }
/**
 * As a user would configure them: the defaults (five failures in a row); the
 * ratio rule added (the consecutive rule stays, whichever fires first opens);
 * and the ratio rule alone (a failureThreshold never reached), to show what
 * each rule does by itself.
 */
const RULES = {
  consecutive: {},
  ratio: RATIO_RULE,
  'ratio alone': { ...RATIO_RULE, failureThreshold: 1_000_000_000 }
}
/** Healthy traffic before an outage or a latency step: the window is full of successes when it starts. */
const HEALTHY_MS = 60_000
/** How long a run waits for the circuit to open before it says "not within". */
const GIVE_UP_MS = 3_600_000
const IN_FLIGHT = 1 << 16
/** The window at its default: the target is to open within one of it. */
const WINDOW_MS = resolveBreaker({}, 'circuitBreaker', () => { throw new Error('unreachable') }).samplingMs

/** A small seeded PRNG (mulberry32): every run can be replayed. */
function seeded (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function breakerFor (options, random, onOpen) {
  const settings = resolveBreaker(options, 'circuitBreaker', (option, reason) => { throw new Error(`${option} ${reason}`) })
  // Openings from closed: a failed probe that reopens the circuit is the same episode.
  return new CircuitBreaker(settings, (from, to, _ms, cause) => { if (from === 'closed' && to === 'open') onOpen(cause) }, random)
}

/**
 * One run: calls every `1000 / rate` ms for `durationMs`; an attempt sent
 * at `t` fails with probability `failureAt(t)` and answers after
 * `latencyAt(t)` ms (never shorter than the one before, so answers come in
 * the order they were sent). With `stopAtOpen`, ends at the first opening.
 */
function run ({ options, rate, durationMs, failureAt, latencyAt, seed, stopAtOpen, from = 0 }) {
  const random = seeded(seed)
  const opens = []
  let now = 0
  const breaker = breakerFor(options, random, (cause) => { opens.push({ at: now, cause }) })
  // The attempts in flight, in a ring: when each answers, its permit, whether it failed, its time to headers.
  const doneAt = new Float64Array(IN_FLIGHT)
  const permits = new Uint8Array(IN_FLIGHT)
  const failed = new Uint8Array(IN_FLIGHT)
  const took = new Float64Array(IN_FLIGHT)
  let head = 0
  let count = 0
  let sent = 0
  let sentAfterFrom = 0
  let sentAfterFromBeforeOpen = -1
  const gap = 1_000 / rate
  for (let i = 0; ; i++) {
    const sendAt = i * gap
    if (sendAt >= durationMs) break
    while (count > 0 && doneAt[head] <= sendAt) {
      now = doneAt[head]
      const openedBefore = opens.length
      breaker.record(permits[head], failed[head] === 1 ? Verdict.Failure : Verdict.Success, now, took[head])
      if (opens.length > openedBefore && sentAfterFromBeforeOpen < 0 && now >= from) sentAfterFromBeforeOpen = sentAfterFrom
      head = (head + 1) & (IN_FLIGHT - 1)
      count--
    }
    if (stopAtOpen && opens.some((open) => open.at >= from)) break
    now = sendAt
    const permit = breaker.acquire(now)
    if (permit === Permit.Denied) continue
    if (count === IN_FLIGHT) throw new Error('too many attempts in flight for the ring')
    const tail = (head + count) & (IN_FLIGHT - 1)
    const latency = latencyAt(sendAt)
    doneAt[tail] = sendAt + latency
    permits[tail] = permit
    failed[tail] = random() < failureAt(sendAt) ? 1 : 0
    took[tail] = latency
    count++
    sent++
    if (sendAt >= from) sentAfterFrom++
  }
  const first = opens.find((open) => open.at >= from)
  return {
    opens,
    sent,
    openedAfterMs: first === undefined ? Infinity : first.at - from,
    cause: first?.cause,
    sentBeforeOpen: first === undefined ? sentAfterFrom : sentAfterFromBeforeOpen
  }
}

/** The middle value, Infinity ("never opened") included, unlike common.js's median. */
const median = (values) => [...values].sort((a, b) => a - b)[(values.length - 1) >> 1]
const max = (values) => values.reduce((a, b) => Math.max(a, b), -Infinity)

/** What a set of runs of one rule and rate came to. */
function summary (rule, rate, runs) {
  const opened = runs.map((r) => r.openedAfterMs)
  const sent = runs.map((r) => r.sentBeforeOpen)
  return {
    rule,
    rate,
    runs: runs.length,
    // null (JSON has no Infinity) when a run never opened within GIVE_UP_MS.
    openedMs: { median: finite(median(opened)), max: finite(max(opened)) },
    withinWindow: opened.filter((ms) => ms <= WINDOW_MS).length,
    sent: { median: median(sent), max: max(sent) },
    causes: [...new Set(runs.map((r) => r.cause).filter((cause) => cause !== undefined))]
  }
}

const finite = (value) => Number.isFinite(value) ? value : null

/** Time to open and attempts sent after a healthy upstream starts failing 30 % of calls, at each rate and rule, over `seeds` runs. */
function outage (seeds) {
  const rows = []
  for (const [rule, options] of Object.entries(RULES)) {
    for (const rate of RATES) {
      const runs = []
      for (let seed = 1; seed <= seeds; seed++) {
        runs.push(run({
          options,
          rate,
          durationMs: HEALTHY_MS + GIVE_UP_MS,
          from: HEALTHY_MS,
          failureAt: (t) => t < HEALTHY_MS ? 0 : 0.3,
          latencyAt: () => 50,
          seed: seed * 7_919 + rate,
          stopAtOpen: true
        }))
      }
      rows.push(summary(rule, rate, runs))
    }
  }
  return rows
}

/** Openings per simulated hour when 5 % of calls fail, from a fresh client on. */
function falseOpenings (hours) {
  const rows = []
  for (const [rule, options] of Object.entries(RULES)) {
    for (const rate of RATES) {
      const result = run({ options, rate, durationMs: hours * 3_600_000, failureAt: () => 0.05, latencyAt: () => 50, seed: 4_242 + rate, stopAtOpen: false })
      rows.push({ rule, rate, hours, opens: result.opens.length, perHour: result.opens.length / hours, causes: [...new Set(result.opens.map((open) => open.cause))] })
    }
  }
  return rows
}

/** Every answer a 200, and latency steps from 50 ms to 2 s: time from the step to the slow-call rule opening. */
function latencyStep (seeds) {
  const rows = []
  for (const rate of RATES) {
    const runs = []
    for (let seed = 1; seed <= seeds; seed++) {
      // Arrivals are even: the seed only moves the step within one gap between calls.
      const step = HEALTHY_MS + (seed / seeds) * (1_000 / rate)
      runs.push(run({
        options: SLOW_RULE,
        rate,
        durationMs: step + GIVE_UP_MS,
        from: step,
        failureAt: () => 0,
        latencyAt: (t) => t < step ? 50 : 2_000,
        seed,
        stopAtOpen: true
      }))
    }
    rows.push(summary('slow calls', rate, runs))
  }
  return rows
}

/** The whole phase. */
function breakerPhase ({ seeds = 25, hours = 10 } = {}) {
  const started = process.hrtime.bigint()
  const result = {
    settings: { ratio: RATIO_RULE, slow: SLOW_RULE, healthyMs: HEALTHY_MS, giveUpMs: GIVE_UP_MS, windowMs: WINDOW_MS, seeds, hours },
    outage: outage(seeds),
    falseOpenings: falseOpenings(hours),
    latencyStep: latencyStep(seeds)
  }
  result.seconds = Number(process.hrtime.bigint() - started) / 1e9
  return result
}

module.exports = { breakerPhase, run }

if (require.main === module) {
  const seeds = Number(process.argv[2] ?? 25)
  const hours = Number(process.argv[3] ?? 10)
  if (process.send === undefined) process.stdout.write(JSON.stringify(breakerPhase({ seeds, hours }), null, 2) + '\n')
  else answerErrors(async () => answer(breakerPhase({ seeds, hours })))
}
