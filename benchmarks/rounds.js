'use strict'

// Interleaved rounds: every contender once per round, in an order that
// rotates each round, each in a fresh process. Ratios are taken between
// contenders of the same round, so drift in the machine's load (it is shared)
// moves both sides of a ratio alike; the report gives medians over rounds.

const { median } = require('./common')

function log (line) {
  process.stderr.write(`[bench] ${line}\n`)
}

/** Rotates `list` by `round`, so that no contender always runs first or last. */
function rotate (list, round) {
  const shift = round % list.length
  return [...list.slice(shift), ...list.slice(0, shift)]
}

/** Whether another round, as long as the average so far, still ends within the phase's budget. */
function roomForRound (started, round, budgetMs) {
  if (round === 0) return true
  const elapsed = Date.now() - started
  return elapsed + elapsed / round <= budgetMs
}

/**
 * Runs up to `plan.rounds` rounds of `names` within `plan.budgetMs`;
 * `measure(name)` resolves with one contender's result for one round.
 * Resolves with { rounds: [{ [name]: result }], failures: { [name]: message } }.
 */
async function runRounds (phase, names, plan, measure, describe) {
  const rounds = []
  const failures = {}
  const started = Date.now()
  for (let round = 0; round < plan.rounds && roomForRound(started, round, plan.budgetMs); round++) {
    const results = {}
    for (const name of rotate(names, round)) {
      try {
        results[name] = await measure(name)
        log(`${phase} round ${round + 1}/${plan.rounds} ${name}: ${describe(results[name])}`)
      } catch (error) {
        failures[name] = error.message.split('\n').slice(0, 2).join(' ')
        log(`${phase} round ${round + 1}/${plan.rounds} ${name}: FAILED ${failures[name]}`)
      }
    }
    rounds.push(results)
  }
  return { rounds, failures }
}

/** The median over rounds of one contender's `key`. */
function medianOf (phase, name, key) {
  return median(phase.rounds.map((round) => round[name]?.[key]))
}

/** The median over rounds of `name`'s `key` divided by `base`'s in the same round. */
function ratioOf (phase, name, base, key) {
  return median(phase.rounds.map((round) => {
    const a = round[name]?.[key]
    const b = round[base]?.[key]
    return a === undefined || b === undefined || b === 0 ? NaN : a / b
  }))
}

/**
 * The median over rounds of `name`'s `key` divided by the mean of `bases`'
 * in the same round: two identical controls halve the noise one baseline
 * process brings.
 */
function ratioToMeanOf (phase, name, bases, key) {
  return median(phase.rounds.map((round) => {
    const a = round[name]?.[key]
    const values = bases.map((base) => round[base]?.[key])
    if (a === undefined || values.some((value) => value === undefined || value === 0)) return NaN
    return a / (values.reduce((sum, value) => sum + value, 0) / values.length)
  }))
}

/** The rounds in which `name` was measured. */
function resultsOf (phase, name) {
  return phase.rounds.map((round) => round[name]).filter((result) => result !== undefined)
}

module.exports = { log, runRounds, medianOf, ratioOf, ratioToMeanOf, resultsOf }
