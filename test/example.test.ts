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

/** The lines of the scene whose heading starts with `--- <number>.` (empty when there is none). */
function scene (lines: string[], number: number): string[] {
  const start = lines.findIndex((line) => line.startsWith(`--- ${number}.`))
  if (start === -1) return []
  const end = lines.findIndex((line, i) => i > start && line.startsWith('--- '))
  return lines.slice(start, end === -1 ? undefined : end)
}

/** Index of the first line matching each pattern, in order; -1 from the first one missing on. */
function inOrder (lines: string[], patterns: RegExp[]): number[] {
  const found: number[] = []
  let from = 0
  for (const pattern of patterns) {
    const at = lines.findIndex((line, i) => i >= from && pattern.test(line))
    found.push(at)
    if (at === -1) from = lines.length
    else from = at + 1
  }
  return found
}

test('npm run example shows each scene and exits by itself', async (t) => {
  const { code, signal, stdout, stderr, ms } = await runExample()
  t.equal(signal, null, 'it was not killed', { stderr })
  t.equal(code, 0, 'it exits 0', { stderr })
  t.ok(ms < LIMIT_MS, `it ends in under 20 s (took ${Math.round(ms)} ms)`)
  t.equal(stderr, '', 'nothing on stderr')
  const lines = stdout.split('\n')
  const check = (title: string, section: string[], patterns: RegExp[]): void => {
    const found = inOrder(section, patterns)
    t.notOk(found.includes(-1), title, { missing: patterns[found.indexOf(-1)]?.source, section: section.join('\n') })
  }

  check('all is well', scene(lines, 1), [/<- 200 coffee in 1 attempt/, /<- 200 charged coffee \(ch_1\) in 1 attempt/])

  const retryAfter = scene(lines, 2)
  check('Retry-After opens the circuit for that second, others fail fast, the retry closes it', retryAfter, [
    /payments {3}POST \/v1\/charges .* -> 503 \(Retry-After: 1\)/,
    /payments {5}circuit closed -> open \(half-opens in 1000 ms, as Retry-After asked\)/,
    /payments {5}retry: POST \/charges attempt 1 failed \(status 503\), retry in 1000 ms/,
    /<- 503 FRH_CIRCUIT_OPEN "payments is unavailable, try again later" {2}retry-after: 1 /,
    /payments {5}circuit open -> half-open/,
    /payments {5}circuit half-open -> closed/,
    /<- 200 charged coffee \(ch_2\) in 2 attempt\(s\)/
  ])
  // The id the client sent is the one the upstream logged on both attempts and the gateway echoed.
  const id = /client {5}POST \/checkout {2}x-request-id=(demo-\d+)/.exec(retryAfter.find((line) => line.includes('client ')) ?? '')?.[1] ?? 'missing'
  t.equal(retryAfter.filter((line) => line.includes(`payments   POST /v1/charges  x-request-id=${id} `)).length, 2, `the payments upstream logged ${id} on both attempts`)
  t.ok(retryAfter.some((line) => line.includes('<- 200 charged coffee') && line.includes(`(reply x-request-id=${id})`)), 'the gateway echoed it on the reply')

  const deadline = scene(lines, 3)
  check('a short budget: forwarded, shrinking, and the call stops at the deadline', deadline, [
    /client {5}POST \/checkout .* x-request-timeout-ms=500/,
    /catalog-. {2}GET \/products\/1 .* budget=\d+ms/,
    /payments {3}POST \/v1\/charges .* budget=\d+ms {2}\.\.\. answers 503/,
    /payments {5}retry: POST \/charges attempt 1 failed \(status 503\)/,
    /payments {3}POST \/v1\/charges .* budget=\d+ms {2}\.\.\. answers 503/,
    /payments {5}deadline: POST \/charges cut when the caller's budget ran out \(after 2 attempt\(s\)\)/,
    /<- 504 FRH_TIMEOUT "the request ran out of its time budget"/
  ])
  const budgets = deadline.map((line) => /payments {3}POST .* budget=(\d+)ms/.exec(line)?.[1]).filter((ms) => ms !== undefined).map(Number)
  t.ok(budgets.length === 2 && budgets[0] <= 500 && budgets[1] < budgets[0] - 200, `the budget shrinks from attempt to attempt (${budgets.join(' ms, ')} ms)`)

  check('backoff with jitter', scene(lines, 4), [
    /payments {5}retry: POST \/charges attempt 1 failed \(status 503\), retry in \d+ ms/,
    /payments {5}retry: POST \/charges attempt 2 failed \(status 503\), retry in \d+ ms/,
    /<- 200 charged coffee \(ch_\d+\) in 3 attempt\(s\)/
  ])

  const hedge = scene(lines, 5)
  check('a stalled attempt is hedged and the hedge answers', hedge, [
    /catalog-(.) {2}GET \/products\/1 .* \.\.\. stalls/,
    /catalog {6}hedge: GET \/products\/1 no answer after \d+ ms, attempt 2 goes to another replica/,
    /catalog-. {2}GET \/products\/1 .* -> 200/,
    /<- 200 coffee in 2 attempt\(s\)/,
    /catalog stats: hedges=1 hedgeWins=1/
  ])
  const stalled = /(catalog-.) {2}GET \/products\/1 .* \.\.\. stalls/.exec(hedge.join('\n'))?.[1]
  const answered = /(catalog-.) {2}GET \/products\/1 .* -> 200/.exec(hedge.join('\n'))?.[1]
  t.ok(stalled !== undefined && answered !== undefined && stalled !== answered, `the hedge went to another replica (${stalled}, then ${answered})`)
  // The loser's cancellation reaches its replica a moment later, at the end of this scene or early in the next.
  t.ok([...hedge, ...scene(lines, 6)].some((line) => line.includes(`${stalled}    the stalled request was cancelled`)), 'the stalled attempt was cancelled')

  const replicas = scene(lines, 6)
  check('a bad replica is ejected, calls keep succeeding, and it returns', replicas, [
    /catalog-b {2}GET \/products\/2 .* -> 503 \(this replica is bad\)/,
    /catalog {6}replica catalog-b ejected for 1000 ms \(ejection 1\)/,
    /catalog-b got 0 of the 3 calls made while it was ejected/,
    /catalog {6}replica catalog-b serves again/,
    /catalog-b {2}GET \/products\/2 .* -> 200/,
    /catalog replicas: .*catalog-b ejections=1 failures=2/
  ])
  t.same(replicas.filter((line) => /client {5}<- /.test(line) && !line.includes('<- 200 bagel')), [], 'every call succeeded')

  check('payments goes down: the circuit opens', scene(lines, 7), [
    /payments {5}retry: POST \/charges attempt 1 failed \(ECONNREFUSED\)/,
    /payments {5}circuit closed -> open \(half-opens in 1500 ms\)/,
    /gateway {6}FRH_UPSTREAM: payments: POST \/charges failed after 3 attempt\(s\): connection refused/,
    /<- 502 FRH_UPSTREAM "payments could not be reached"/
  ])
  check('the open circuit fails fast; catalog is unaffected', scene(lines, 8), [
    /<- 503 FRH_CIRCUIT_OPEN "payments is unavailable, try again later" {2}retry-after: 2 /,
    /<- 200 bagel/,
    /<- 503 FRH_CIRCUIT_OPEN/
  ])
  check('a failed probe opens it again', scene(lines, 9), [/payments {5}circuit open -> half-open/, /payments {5}circuit half-open -> open/, /<- 502 FRH_UPSTREAM/])
  check('a successful probe closes it', scene(lines, 10), [/payments {5}circuit half-open -> closed/, /<- 200 charged coffee/, /<- 200 charged coffee/])

  check('a dropped token stream resumes with Last-Event-ID and the caller sees one sequence', scene(lines, 11), [
    /tokens {5}GET \/v1\/stream$/,
    /tokens {7}the connection drops after event 3/,
    /tokens {7}resume: GET \/v1\/stream after event 3, in \d+ ms/,
    /tokens {5}GET \/v1\/stream {2}last-event-id=3/,
    /client {5}<- 200 events 1, 2, 3, 4, 5, 6$/
  ])

  const hangUp = scene(lines, 12)
  check('a caller who hangs up ends the upstream stream', hangUp, [
    /tokens {5}GET \/v1\/stream$/,
    /client {5}hangs up after events 1, 2$/,
    /gateway {6}the caller went away: the upstream stream is closed/,
    /tokens {7}the gateway closed the stream after event \d$/
  ])
  t.notOk(hangUp.some((line) => /id: 6|events .*6/.test(line)), 'the upstream did not send the whole stream')

  const idle = scene(lines, 13)
  check('a stalled stream is cut by the idle timeout, resumes once, and the relay ends with kind idle', idle, [
    /tokens {5}GET \/v1\/stream$/,
    /tokens {7}stalls after event 2/,
    /tokens {7}idle: GET \/v1\/stream sent nothing for 300 ms, the connection is cut/,
    /tokens {7}resume: GET \/v1\/stream after event 2, in \d+ ms/,
    /tokens {5}GET \/v1\/stream {2}last-event-id=2/,
    /tokens {7}idle: GET \/v1\/stream sent nothing for 300 ms/,
    /gateway {6}the token stream failed: .*idle timeout of 300 ms.* \(kind 'idle'\)/,
    /client {5}<- 200 events 1, 2, then an error event \{"code":"FRH_TIMEOUT"\}$/
  ])
  // The stall is cut by silence after the commit, not by the attempt's timeout: about 300 ms after it starts.
  const at = (line: string | undefined): number => Number(/^\+\s*(\d+\.\d+)s/.exec(line ?? '')?.[1] ?? NaN)
  const stalledAt = at(idle.find((line) => /tokens {7}stalls after event 2/.test(line)))
  const cutAt = at(idle.find((line) => /tokens {7}idle: GET \/v1\/stream/.test(line)))
  t.ok(cutAt - stalledAt >= 0.25, `the idle timeout waited for the silence (${Math.round((cutAt - stalledAt) * 1000)} ms)`)
  t.notOk(idle.some((line) => line.includes('attempt timeout')), 'no attempt timeout cut the stream')

  check('a form and a multipart upload arrive as sent', scene(lines, 14), [
    /documents {2}POST \/v1\/forms {2}content-type=application\/x-www-form-urlencoded {2}content-length=\d+/,
    /documents {4}fields \{"rating":"5","tags":\["fast","clear"\],"anonymous":"true"\}/,
    /client {5}<- 200 received application\/x-www-form-urlencoded: /,
    /documents {2}POST \/v1\/files {2}content-type=multipart\/form-data; boundary=… {2}content-length=\d+/,
    /documents {4}fields \{"title":"plan"\} {2}file=plan\.md \(text\/markdown, 19 bytes\)/,
    /client {5}<- 200 received multipart\/form-data: \{"title":"plan"\}, file plan\.md \(text\/markdown, 19 bytes\)/
  ])

  const auth = scene(lines, 15)
  check('a token before the first call, and one shared refresh after the 401s', auth, [
    /gateway {6}auth\.token\(\): asks the identity provider for a token/,
    /identity {3}POST \/oauth\/token {2}grant_type=client_credentials client_id=gateway {2}-> tok-1/,
    /accounts {3}GET \/v1\/me .* authorization=Bearer tok-1 {2}-> 200/,
    /client {5}<- 200 ada \(pro\) in 1 attempt\(s\)/,
    /identity {5}revokes tok-1/,
    /accounts {3}GET \/v1\/me .* authorization=Bearer tok-1 {2}-> 401/,
    /identity {3}POST \/oauth\/token .* -> tok-2/,
    /accounts {3}GET \/v1\/me .* authorization=Bearer tok-2 {2}-> 200/,
    /accounts {3}GET \/v1\/me .* authorization=Bearer tok-2 {2}-> 200/
  ])
  const afterRevoke = auth.slice(auth.findIndex((line) => line.includes('revokes tok-1')))
  t.equal(afterRevoke.filter((line) => /authorization=Bearer tok-1 {2}-> 401/.test(line)).length, 2, 'both calls were answered 401')
  t.equal(afterRevoke.filter((line) => line.includes('auth.token()')).length, 1, 'the two 401s shared one refresh')
  t.equal(afterRevoke.filter((line) => /<- 200 ada \(pro\) in 1 attempt\(s\)/.test(line)).length, 2, 'both succeeded, and the resend was not a retry')

  const limit = scene(lines, 16)
  check('a 429 with Retry-After pauses the rate limit, calls wait their turn, the circuit stays closed', limit, [
    /quotes {5}GET \/v1\/quotes\/ACME .* -> 429 \(Retry-After: 1\)/,
    /quotes {7}rate limit paused for 1000 ms \(retry-after\)/,
    /client {5}GET \/quotes\/BOLT/,
    /quotes {5}GET \/v1\/quotes\/BOLT .* -> 200/,
    /quotes {5}GET \/v1\/quotes\/CRUX .* -> 200/,
    /quotes {5}GET \/v1\/quotes\/ACME .* -> 200/,
    /gateway {4}quotes stats: circuit=closed retries=1 rateLimitWaits=3 rateLimited=0/
  ])
  t.ok(limit.some((line) => /quotes {7}retry: GET \/quotes\/ACME attempt 1 failed \(status 429\), retry in 1000 ms/.test(line)), 'the call that met the 429 retries when Retry-After says')
  t.notOk(limit.some((line) => /circuit [\w-]+ -> |FRH_|<- [45]\d\d/.test(line)), 'no circuit transition and no failed call')
  const pausedAt = at(limit.find((line) => /quotes {5}GET .* -> 429/.test(line)))
  const resumedAt = at(limit.find((line) => /quotes {5}GET \/v1\/quotes\/BOLT/.test(line)))
  t.ok(resumedAt - pausedAt >= 0.9, `nothing was sent during the pause (the next call went after ${Math.round((resumedAt - pausedAt) * 1000)} ms)`)

  // What the gateway logs stays in its logs: no reply quotes an internal address or an upstream's error.
  t.same(lines.filter((line) => line.includes('client     <- ') && /ECONNREFUSED|127\.0\.0\.1|answered \d{3}/.test(line)), [], 'replies carry generic messages only')
  t.match(stdout, /"circuit":"closed"/, 'the payments circuit ends closed')
})
