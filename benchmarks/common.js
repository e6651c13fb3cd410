'use strict'

const { spawn, spawnSync } = require('node:child_process')
const path = require('node:path')

// The client under test gets CPU 0 to itself; the upstream (and the orchestrator,
// which is idle while a child measures) share CPU 1.
const CLIENT_CPU = '0'
const SERVER_CPU = '1'

const canPin = require('node:os').availableParallelism() >= 2 &&
  spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' }).status === 0

/**
 * Starts `benchmarks/<script>` in a fresh Node process (pinned to `cpu` when
 * taskset works) and resolves with the child and its first IPC message, which
 * every script sends once it is ready or done.
 */
function startChild (script, args = [], { cpu, execArgv = [], env, timeoutMs = 60_000 } = {}) {
  const nodeArgs = [...execArgv, path.join(__dirname, script), ...args]
  const command = canPin && cpu !== undefined ? 'taskset' : process.execPath
  const commandArgs = command === 'taskset' ? ['-c', cpu, process.execPath, ...nodeArgs] : nodeArgs
  const child = spawn(command, commandArgs, {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, ...env }
  })
  const first = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${script} ${args.join(' ')}: no answer within ${timeoutMs} ms`))
    }, timeoutMs)
    child.once('message', (message) => {
      clearTimeout(timer)
      resolve(message)
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${script} ${args.join(' ')}: exited (${signal ?? code}) before answering`))
    })
    child.once('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })
  return first.then((message) => ({ child, message }))
}

/** Runs a script that measures, answers once and exits; resolves with its answer. */
async function runChild (script, args, options) {
  const { child, message } = await startChild(script, args, options)
  await stopChild(child, 3_000)
  if (message.error !== undefined) throw new Error(`${script} ${args.join(' ')}: ${message.error}`)
  return message
}

/** Stops a child: after `graceMs` for it to exit by itself, SIGTERM, then SIGKILL. */
function stopChild (child, graceMs = 0) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const term = setTimeout(() => child.kill('SIGTERM'), graceMs)
    const kill = setTimeout(() => child.kill('SIGKILL'), graceMs + 5_000)
    child.once('exit', () => {
      clearTimeout(term)
      clearTimeout(kill)
      resolve()
    })
  })
}

/** Sends `message` to the parent, then exits: a measuring child has nothing left to do. */
function answer (message) {
  process.send(message, () => process.exit(0))
}

/** Turns a crash in a measuring child into an answer the orchestrator can report. */
function answerErrors (main) {
  main().catch((error) => answer({ error: error?.stack ?? String(error) }))
}

function median (values) {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// Clock ticks per second of /proc/<pid>/stat; 100 on every Linux this runs on.
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100

/**
 * CPU seconds (user + system) another process has used so far, from
 * /proc/<pid>/stat; NaN where there is no /proc or no such process.
 */
function cpuSecondsOf (pid) {
  try {
    const stat = require('node:fs').readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name may hold spaces: the fields that matter follow its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
  } catch {
    return NaN
  }
}

/** A CPU meter for another process: `stop()` gives its CPU % of one core since `start`. */
function cpuMeter (pid) {
  const cpuStart = cpuSecondsOf(pid)
  const start = performance.now()
  return { stop: () => 100 * (cpuSecondsOf(pid) - cpuStart) / ((performance.now() - start) / 1000) }
}

/** A contender's counters over a window: the end's minus the start's. */
function difference (end, start) {
  if (end === undefined) return undefined
  const out = {}
  for (const key of Object.keys(end)) out[key] = end[key] - (start?.[key] ?? 0)
  return out
}

module.exports = { CLIENT_CPU, SERVER_CPU, canPin, startChild, runChild, stopChild, answer, answerErrors, median, sleep, cpuSecondsOf, cpuMeter, difference }
