import { execFile } from 'node:child_process'
import path from 'node:path'
import { test } from 'tap'

// `npm run example` is `tsx example/index.ts`; `node --import tsx` is the same
// without the second process the tsx CLI starts.
const ROOT = path.resolve(__dirname, '..')
const LIMIT_MS = 20_000

interface Outcome {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

function runExample (): Promise<Outcome> {
  const env = { ...process.env }
  // The example runs as a user runs it: without the test runner's loaders and coverage.
  delete env.NODE_OPTIONS
  delete env.NODE_V8_COVERAGE
  const started = performance.now()
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'example/index.ts'], {
      cwd: ROOT, env, timeout: LIMIT_MS + 10_000, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024
    }, (error, stdout, stderr) => {
      resolve({
        code: error === null ? 0 : typeof error.code === 'number' ? error.code : null,
        signal: error?.signal ?? null,
        stdout,
        stderr,
        ms: performance.now() - started
      })
    })
  })
}

test('npm run example shows the resilience and exits by itself', async (t) => {
  const { code, signal, stdout, stderr, ms } = await runExample()
  t.equal(signal, null, 'it was not killed', { stderr })
  t.equal(code, 0, 'it exits 0', { stderr })
  t.ok(ms < LIMIT_MS, `it ends in under 20 s (took ${Math.round(ms)} ms)`)
  t.equal(stderr, '', 'nothing on stderr')

  const lines = stdout.split('\n')
  const indexOf = (pattern: RegExp): number => lines.findIndex((line) => pattern.test(line))

  const retryAfter = indexOf(/payments {4}retry: POST \/charges attempt 1 failed \(status 503\), retry in 1000 ms/)
  t.ok(retryAfter >= 0, 'a 503 with Retry-After: 1 is retried after 1000 ms')
  t.ok(indexOf(/payments {4}retry: POST \/charges attempt 2 failed \(status 503\), retry in \d+ ms/) >= 0, 'a 503 without Retry-After is retried with backoff')

  const refused = indexOf(/retry: POST \/charges attempt 1 failed \(ECONNREFUSED\)/)
  const opened = indexOf(/payments {4}circuit closed -> open \(half-opens in 1500 ms\)/)
  const shortCircuited = indexOf(/<- 503 FRH_CIRCUIT_OPEN short-circuited/)
  const halfOpen = indexOf(/payments {4}circuit open -> half-open/)
  const reopened = indexOf(/payments {4}circuit half-open -> open/)
  const closed = indexOf(/payments {4}circuit half-open -> closed/)
  t.ok(refused >= 0, 'a refused connection is retried')
  t.ok(opened > refused, 'the circuit opens after the refused attempts')
  t.ok(shortCircuited > opened, 'then a call is short-circuited')
  t.ok(halfOpen > shortCircuited, 'then the circuit half-opens')
  t.ok(reopened > halfOpen, 'a failed probe opens it again')
  t.ok(closed > reopened, 'and a successful probe closes it')

  // The id the client sent is the one the upstream logged and the gateway echoed.
  const section = indexOf(/^--- 2\. payments answers 503 with Retry-After/)
  const sent = /client {4}POST \/checkout {2}x-request-id=(demo-\d+)/.exec(lines.slice(section).find((line) => line.includes('client ')) ?? '')
  t.ok(section >= 0 && sent, 'the section with the Retry-After starts with a checkout')
  const id = sent?.[1] ?? 'missing'
  const seenUpstream = lines.filter((line) => line.includes(`payments  POST /v1/charges  x-request-id=${id} `))
  t.equal(seenUpstream.length, 2, `the payments upstream logged ${id} on both attempts`)
  t.ok(lines.some((line) => line.includes('<- 200 charged coffee') && line.includes(`(reply x-request-id=${id})`)), 'the gateway echoed it on the reply')

  t.match(stdout, /"circuit":"closed"/, 'the payments circuit ends closed')
})
