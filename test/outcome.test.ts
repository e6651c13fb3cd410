import { test } from 'tap'
import { Cut, type CutValue } from '../lib/pipeline/attempt-state'
import type { Attempt } from '../lib/pipeline/attempt'
import { DEFAULT_BREAKER, DEFAULT_RETRY, type ResolvedBreaker } from '../lib/options/resolve'
import { InvalidRequestError, TimeoutError, UpstreamError } from '../lib/errors'
import type { TimeoutKind } from '../lib/errors'
import { Verdict } from '../lib/policies/circuit-breaker'
import { classify, type ClassifyHost, type Outcome, SUCCESS } from '../lib/pipeline/outcome'
import { CLOCK_START, ManualClock } from './helpers/manual-clock'

const call = { clientName: 'quotes', method: 'GET', path: '/quote', attempts: 1 }
const clock = new ManualClock()

function hostWith (breakerSettings: ResolvedBreaker | false, rateLimit: object | null = null): ClassifyHost {
  return { breakerSettings, rateLimit, clock }
}

function ended (fields: { statusCode?: number, headers?: Record<string, string>, error?: unknown, cut?: CutValue, timeoutKind?: TimeoutKind }): Attempt {
  return { statusCode: 0, headers: null, error: undefined, cut: Cut.None, timeoutKind: 'attempt', ...fields } as unknown as Attempt
}

function answer (statusCode: number, headers: Record<string, string> = {}): Outcome {
  return classify(ended({ statusCode, headers }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
}

function failure (code: string | undefined): Outcome {
  return classify(ended({ error: Object.assign(new Error('failed'), { code }) }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
}

test('a plain answer is the one shared success: nothing is allocated for it', async (t) => {
  t.equal(answer(200), SUCCESS)
  t.equal(answer(204), SUCCESS)
  t.equal(answer(404), SUCCESS, 'an answer that is not a failure of the upstream')
  t.ok(Object.isFrozen(SUCCESS))
  t.equal(answer(200), answer(201), 'the same value every time')
})

test('the adaptive limit\'s drops: a timeout, a refused or reset connection, a 429 or a 503', async (t) => {
  t.equal(classify(ended({ error: new Error('timeout'), cut: Cut.Timeout }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER)).dropped, true, 'an attempt timeout')
  t.equal(answer(429).dropped, true)
  t.equal(answer(503).dropped, true)
  t.equal(answer(500).dropped, false, 'a 500 is an answer')
  t.equal(answer(200).dropped, false)
  t.equal(failure('ECONNREFUSED').dropped, true)
  t.equal(failure('ECONNRESET').dropped, true)
  t.equal(failure('ENOTFOUND').dropped, false, 'a name that does not resolve is no overload')
  t.equal(failure(undefined).dropped, false)
})

test('statuses: the verdict, whether the retry rules apply, and whether a POST may be sent again', async (t) => {
  const failed = answer(502)
  t.equal(failed.verdict, Verdict.Failure)
  t.equal(failed.transient, true)
  t.equal(failed.unprocessed, false, 'a 502 may have been processed')
  t.equal(failed.error, undefined, 'the call resolves with the response')
  t.equal(answer(500, {}).verdict, Verdict.Failure)
  t.equal(answer(501).transient, false, 'not in statusCodes')
  t.equal(answer(501).verdict, Verdict.Failure)
  const limited = answer(429)
  t.equal(limited.verdict, Verdict.Success, 'a 429 is no failure of the upstream')
  t.equal(limited.unprocessed, true)
  t.equal(limited.askedWaitMs, undefined, 'no Retry-After')
  t.equal(limited.opensCircuitMs, 0)
  const noRetry = classify(ended({ statusCode: 503 }), call, false, hostWith(false))
  t.equal(noRetry.transient, false, 'retry off')
  t.equal(noRetry.verdict, Verdict.Failure)
})

test('Retry-After is read once: the wait it asks for and how long it opens the circuit', async (t) => {
  const asked = answer(503, { 'retry-after': '2' })
  t.equal(asked.askedWaitMs, 2_000)
  t.equal(asked.opensCircuitMs, 2_000)
  t.equal(answer(503, { 'retry-after': '100000' }).opensCircuitMs, 10 * DEFAULT_BREAKER.recoveryMs, 'capped at 10 × recoveryMs')
  t.equal(answer(503, { 'retry-after': '100000' }).askedWaitMs, 100_000_000, 'the wait itself is not capped')
  const date = new Date(CLOCK_START + 3_000).toUTCString()
  t.equal(answer(429, { 'retry-after': date }).askedWaitMs, 3_000, 'an HTTP-date, against the wall clock')
  t.equal(answer(503, { 'retry-after': '0' }).askedWaitMs, 0)
  t.equal(answer(503, { 'retry-after': '0' }).opensCircuitMs, 0, 'no wait, nothing to open for')
  t.equal(answer(503, { 'retry-after': 'soon' }).askedWaitMs, undefined, 'unreadable')
  t.equal(answer(500, { 'retry-after': '2' }).askedWaitMs, undefined, 'only on a 429 or 503')
  const distrusted = classify(ended({ statusCode: 503, headers: { 'retry-after': '2' } }), call, { ...DEFAULT_RETRY, respectRetryAfter: false }, hostWith(DEFAULT_BREAKER))
  t.equal(distrusted.askedWaitMs, undefined, 'respectRetryAfter: false')
  t.equal(distrusted.opensCircuitMs, 0)
  const noBreaker = classify(ended({ statusCode: 503, headers: { 'retry-after': '2' } }), call, DEFAULT_RETRY, hostWith(false))
  t.equal(noBreaker.opensCircuitMs, 0, 'no breaker')
  t.equal(noBreaker.askedWaitMs, 2_000)
  const notOpening = classify(ended({ statusCode: 503, headers: { 'retry-after': '2' } }), call, DEFAULT_RETRY, hostWith({ ...DEFAULT_BREAKER, openOnRetryAfter: false }))
  t.equal(notOpening.opensCircuitMs, 0, 'openOnRetryAfter: false')
  t.equal(classify(ended({ statusCode: 503, headers: { 'retry-after': '2' } }), call, false, hostWith(DEFAULT_BREAKER)).opensCircuitMs, 2_000, 'a call without retries still hears the upstream')
  const paused = classify(ended({ statusCode: 429, headers: { 'retry-after': '2' } }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER, {}))
  t.equal(paused.opensCircuitMs, 0, 'with a rate limit, a 429 pauses the limit instead')
  t.equal(paused.askedWaitMs, 2_000)
  t.equal(classify(ended({ statusCode: 503, headers: { 'retry-after': '2' } }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER, {})).opensCircuitMs, 2_000, 'a 503 still opens it')
})

test('transport failures: transient by code, unprocessed when nothing reached the upstream, surfaced as UpstreamError', async (t) => {
  const refused = failure('ECONNREFUSED')
  t.equal(refused.verdict, Verdict.Failure)
  t.equal(refused.transient, true)
  t.equal(refused.unprocessed, true)
  t.type(refused.error, UpstreamError)
  t.equal((refused.error as UpstreamError).attempts, 1)
  const reset = failure('ECONNRESET')
  t.equal(reset.transient, true)
  t.equal(reset.unprocessed, false, 'a reset request may have been processed')
  const other = failure('EWHATEVER')
  t.equal(other.transient, false)
  t.equal(other.verdict, Verdict.Failure)
  t.type(other.error, UpstreamError)
  const fault = failure('UND_ERR_INVALID_ARG')
  t.equal(fault.verdict, Verdict.None, 'the request as given was refused: not the upstream\'s fault')
  t.equal(fault.transient, false)
  t.type(fault.error, InvalidRequestError)
})

test('cuts: a timeout by its kind, and what we cut ourselves says nothing of the upstream', async (t) => {
  const timeout = new TimeoutError(call, 'attempt', 100)
  const attempt = classify(ended({ error: timeout, cut: Cut.Timeout }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
  t.same([attempt.verdict, attempt.transient, attempt.error], [Verdict.Failure, true, timeout])
  const total = classify(ended({ error: timeout, cut: Cut.Timeout, timeoutKind: 'total' }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
  t.same([total.verdict, total.transient, total.dropped], [Verdict.Failure, false, true])
  const deadline = classify(ended({ error: timeout, cut: Cut.Timeout, timeoutKind: 'deadline' }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
  t.same([deadline.verdict, deadline.transient], [Verdict.None, false], 'the inbound deadline is the caller\'s limit')
  for (const cut of [Cut.Caller, Cut.Closed, Cut.Loser, Cut.TooLarge]) {
    const reason = new Error('cut')
    const outcome = classify(ended({ error: reason, cut }), call, DEFAULT_RETRY, hostWith(DEFAULT_BREAKER))
    t.same([outcome.verdict, outcome.transient, outcome.error], [Verdict.None, false, reason], `cut ${cut}`)
  }
})
