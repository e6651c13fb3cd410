'use strict'
// The tap reporter of this repository (.taprc): one line per test file as it
// ends, then every failure in full (its subtest path and YAML diagnostics:
// diff, source, stack), then the totals. It is a plain stream, not one of
// tap's terminal renderers, so the output reads the same in a log file, and
// the test processes' stderr reaches the terminal unfiltered (a file that
// cannot even load shows why).
const { Transform } = require('node:stream')
const { Parser } = require('tap-parser')
const yaml = require('tap-yaml')

/** A test file's result line in the runner's own TAP (top level, not indented). */
const FILE_RESULT = /^(not )?ok \d+ - (.+?)(?: # time=([\d.]+)ms)?(?: \{)?$/

/** What tap's runner says when coverage is under the .taprc gate. */
const COVERAGE_FAILURE = /^# ERROR: incomplete \w+ coverage/

/** Milliseconds as a short human figure. */
function duration (ms) {
  return ms === undefined ? '' : ms < 1000 ? `${Math.round(ms)}ms` : `${(ms / 1000).toFixed(1)}s`
}

/** Indents every line of a block. */
function indent (text, prefix) {
  return text.replace(/\n$/, '').split('\n').map((line) => prefix + line).join('\n')
}

class CompactReporter extends Transform {
  constructor () {
    super()
    this.failures = []
    this.counts = { pass: 0, fail: 0, todo: 0, skip: 0 }
    this.files = { pass: 0, fail: 0 }
    this.partial = ''
    this.parser = new Parser()
    this.parser.on('child', (file) => this.watch(file, [file.name]))
    this.parser.on('assert', (result) => this.fileEnded(result))
    this.coverageFailed = false
    this.parser.on('comment', (line) => {
      if (COVERAGE_FAILURE.test(line)) this.coverageFailed = true
      this.push(line)
    })
    this.parser.on('extra', (text) => this.push(text))
    this.parser.on('bailout', (reason) => this.push(`Bail out! ${reason}\n`))
    this.parser.on('complete', () => this.summary())
  }

  /** Counts the assertions of a test file at any depth and keeps the failed ones. */
  watch (parser, path) {
    parser.on('child', (child) => this.watch(child, [...path, child.name]))
    parser.on('assert', (result) => {
      if (result.closingTestPoint) {
        // A subtest that failed without a failed assertion of its own (it
        // threw, timed out, or ended unplanned) carries its reason here.
        if (!result.ok && !result.todo && !this.hasFailureUnder([...path, result.name])) this.fail(path, result)
        return
      }
      if (result.todo) this.counts.todo++
      else if (result.skip) this.counts.skip++
      else if (result.ok) this.counts.pass++
      else this.fail(path, result)
    })
  }

  fail (path, result) {
    this.counts.fail++
    this.failures.push({ path: [...path, result.name].filter((name) => name !== ''), diag: result.diag })
  }

  hasFailureUnder (path) {
    const prefix = path.filter((name) => name !== '').join('\u0000')
    return this.failures.some((failure) => failure.path.join('\u0000').startsWith(prefix))
  }

  /** Counts a test file; its own failure (exit code, signal, timeout) is kept when no assertion in it says why. */
  fileEnded (result) {
    if (result.ok || result.todo || result.skip) {
      this.files.pass++
    } else {
      this.files.fail++
      if (!this.hasFailureUnder([result.name])) this.failures.push({ path: [result.name], diag: result.diag })
    }
  }

  /**
   * One line per test file as soon as tap reports it done. The parser holds a
   * result until the line after it (diagnostics may follow), and after the
   * last file tap prints the coverage summary first, so the raw line is read.
   */
  fileLine (line) {
    const match = FILE_RESULT.exec(line)
    if (match === null) return
    const [, failed, name, time] = match
    const ms = time === undefined ? undefined : Number(time)
    this.push(`${failed === undefined ? 'ok    ' : 'FAILED'}  ${duration(ms).padStart(7)}  ${name}\n`)
  }

  summary () {
    if (this.failures.length > 0) {
      this.push(`\n${this.failures.length === 1 ? 'One failure' : `${this.failures.length} failures`}:\n`)
      for (const { path, diag } of this.failures) {
        this.push(`\nnot ok ${path.join(' > ')}\n`)
        if (diag !== null && diag !== undefined && Object.keys(diag).length > 0) this.push(indent(yaml.stringify(diag), '  ') + '\n')
      }
    }
    const { pass, fail, todo, skip } = this.counts
    this.push(`\nfiles: ${this.files.pass} passed, ${this.files.fail} failed; assertions: ${pass} passed, ${fail} failed, ${todo} todo, ${skip} skipped\n`)
    if (this.coverageFailed) this.push('coverage is under the gate in .taprc (`npm run coverage` lists the lines); a run of only some files needs --disable-coverage\n')
  }

  _transform (chunk, _encoding, callback) {
    const lines = (this.partial + chunk.toString()).split('\n')
    this.partial = lines.pop() ?? ''
    for (const line of lines) this.fileLine(line)
    this.parser.write(chunk)
    callback()
  }

  _flush (callback) {
    this.parser.end()
    callback()
  }
}

module.exports = CompactReporter
