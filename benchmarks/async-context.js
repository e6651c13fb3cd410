'use strict'

// What capturing a call's async context costs, and re-entering it:
// `node benchmarks/async-context.js`. Each figure is CPU ns (user + system)
// per operation, the median of 9 runs, measured three ways: with no
// AsyncLocalStorage in use, inside one store (a call made while serving a
// request), and inside three (request context, a tracer, an app's own).

const { AsyncLocalStorage, AsyncResource } = require('node:async_hooks')

const RUNS = 9

let sink = null
function noop () {}

/** name → [operation, operations per run] */
const cases = {
  'loop alone': [() => { sink = null }, 200_000],
  'new AsyncResource()': [() => { sink = new AsyncResource('call') }, 200_000],
  'AsyncLocalStorage.snapshot()': [() => { sink = AsyncLocalStorage.snapshot() }, 20_000],
  'resource.runInAsyncScope(fn)': [(state) => { state.resource.runInAsyncScope(noop) }, 200_000],
  'snapshot(fn)': [(state) => { state.snapshot(noop) }, 200_000]
}

function cpuNs () {
  const { user, system } = process.cpuUsage()
  return (user + system) * 1000
}

function measure ([body, ops]) {
  const state = { resource: new AsyncResource('call'), snapshot: AsyncLocalStorage.snapshot() }
  for (let i = 0; i < ops; i++) body(state)
  const runs = []
  for (let run = 0; run < RUNS; run++) {
    const start = cpuNs()
    for (let i = 0; i < ops; i++) body(state)
    runs.push((cpuNs() - start) / ops)
  }
  runs.sort((a, b) => a - b)
  return runs[RUNS >> 1]
}

function row (label) {
  return [label, ...Object.values(cases).map((c) => measure(c).toFixed(0))]
}

const rows = [row('no store')]
const first = new AsyncLocalStorage()
first.run({ requestId: 'a' }, () => {
  rows.push(row('one store'))
  const second = new AsyncLocalStorage()
  const third = new AsyncLocalStorage()
  second.run({ span: 1 }, () => third.run({ own: true }, () => { rows.push(row('three stores')) }))
})

console.log(`Node.js ${process.version}, CPU ns per operation (median of ${RUNS} runs)\n`)
console.log(`| | ${Object.keys(cases).join(' | ')} |`)
console.log(`| --- |${' ---: |'.repeat(Object.keys(cases).length)}`)
for (const line of rows) console.log(`| ${line.join(' | ')} |`)
if (sink === undefined) console.log('')
