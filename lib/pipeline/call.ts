import type { AsyncResource } from 'node:async_hooks'
import { callerScope } from '../async-context'
import { Attempt, type AttemptHost, type AttemptOwner, type BodySink } from './attempt'
import { Cut, type CutValue } from './attempt-state'
import { admit, type AdmissionHost, isRefusal, refuse } from './admission'
import { Permit, type PermitValue, Verdict } from '../policies/circuit-breaker'
import type { Clock, RandomSource } from '../clock'
import { abortReason, ClientClosedError, TimeoutError, UpstreamError } from '../errors'
import type { RetrySkipReason } from '../telemetry/events'
import { armHedge, hedgeDue, type Hedged, type HedgeHost, sendHedge } from './hedge'
import type { Logger } from '../logger'
import type { ResolvedBreaker } from '../options/resolve'
import { classify, describeFailure, type Outcome, SUCCESS } from './outcome'
import { recordOutcome, type RecordHost } from './record-outcome'
import { attemptOptions, attemptTimeout } from './attempt-plan'
import type { ReplicaSet } from '../policies/replicas'
import { followUp, type Following } from './follow-up'
import type { PreparedRequest } from './prepare'
import type { TokenSource } from './auth'
import { HttpResponse } from './response'
import { awaitToken, leaveTokenLine, noTokenCame, tokenCame } from './rate-limit-wait'
import { clearRetryTimer, type Retrying, type RetryWaitHost, retryOrEnd, type Waiter } from './retry-wait'
import { releaseSignal, watchSignal } from './caller-signal'
import type { Upstream } from '../transport/upstream'

// The hot path of every call, and over 300 lines for it: what every call runs stays
// here; what only some calls do is in hedge.ts, follow-up.ts, retry-wait.ts and
// rate-limit-wait.ts, as plain functions taking the call. A call is its own
// hedge-timer entry and its own promise's settlers (captured by one shared
// executor), and a plain 2xx is judged by a shared outcome: a call that
// succeeds at once allocates its Attempt, its promise and its HttpResponse,
// nothing else.

/** What a call needs of its client. */
export interface CallHost extends AttemptHost, AdmissionHost, HedgeHost, RetryWaitHost, RecordHost {
  readonly clock: Clock
  readonly random: RandomSource
  readonly breakerSettings: ResolvedBreaker | false
  readonly replicas: ReplicaSet
  /** The client's base path, which a redirect must stay under. */
  readonly basePath: string
  /** The `auth.token` function's tokens; `null` without one. */
  readonly tokens: TokenSource | null
  /** `fastify.close()` has begun: no more waits, retries or hedges. */
  readonly draining: boolean
  readonly closed: boolean
  /** Calls (and streams) waiting between two attempts, so that close can cut their waits. */
  readonly waiting: Set<Waiter>
  trackAttempt(attempt: Attempt): void
  untrackAttempt(attempt: Attempt): void
}

/** Where a call is: running, waiting (to retry, or for a rate-limit token), settled, or waiting for a new `auth` token after a 401. */
const State = { Running: 0, Waiting: 1, Settled: 2, Reauthenticating: 3 } as const
type StateValue = typeof State[keyof typeof State]

// `new Promise` needs an executor; this one is shared by every call instead of
// a closure per call. It runs synchronously, so a module variable hands it the call.
let callBeingStarted: Call | null = null
function captureSettlers (resolve: (response: HttpResponse) => void, reject: (error: unknown) => void): void {
  const call = callBeingStarted as Call
  call.resolve = resolve
  call.reject = reject
}

/**
 * One admitted call: the state machine only. It starts attempts (first try,
 * retries after a wait, hedges beside a slow attempt), hears each attempt's
 * end once, classifies it (outcome.ts), records the outcome with the
 * policies in one place (record-outcome.ts), waits to retry (retry-wait.ts)
 * or for a rate-limit token (rate-limit-wait.ts), and settles once.
 */
export class Call implements AttemptOwner, Hedged, Retrying, Following {
  // Set by the promise executor in start(), before anything can settle the call.
  resolve!: (response: HttpResponse) => void
  reject!: (error: unknown) => void
  readonly host: CallHost
  /** What is sent: replaced by a redirect and by the resend after a 401. */
  request: PreparedRequest
  readonly clientName: string
  readonly method: string
  readonly path: string
  /** The caller's async context, captured as the call goes out (a call refused at once needs none). */
  scope!: AsyncResource
  /**
   * Set by `client.stream()` before `start()`: the 2xx attempt commits to
   * it, keeps its place in the concurrency limit, and is judged when its
   * body ends rather than at its headers.
   */
  sink: BodySink | null = null
  /** Attempts sent, hedges included (redirects and the resend after a 401 are not attempts). */
  attempts = 0
  /** Redirects followed. */
  redirects = 0
  /** The path the answer came from, relative to the base path: the call's own until a redirect. */
  finalPath: string
  #state: StateValue = State.Running
  /** Attempts that count toward `maxAttempts` (read by retry-wait.ts). */
  tries = 0
  /** Requests sent: attempts, redirects and resends; each attempt's number. */
  #sent = 0
  hedgesSent = 0
  #running: Attempt | null = null
  #alsoRunning: Attempt[] | null = null
  /** The last attempt that failed transiently, and what it meant: the call ends with it if no retry comes. */
  #lastFailure: Attempt | null = null
  #lastOutcome: Outcome = SUCCESS
  /** The response handed out, while its body is still coming. */
  #streaming: Attempt | null = null
  #tried: Upstream[] | null = null
  readonly startedAt: number
  readonly #totalEndsAt: number
  /** The earlier of the total timeout and the inbound deadline. */
  readonly endsAt: number
  /** Internal, of retry-wait.ts: the timer of the wait to retry, and when the retry is due. */
  waitTimer: unknown = null
  retryAt = 0
  /** The listener on the caller's signal (caller-signal.ts), while one is set. */
  callerListener: (() => void) | null = null
  /** Internal, of rate-limit-wait.ts: the breaker's permit of the attempt waiting for a token; whether the call waited in line. */
  tokenPermit: PermitValue = Permit.Pass
  waitedForToken = false
  /** Internal, of retry-wait.ts: when the budget granted the retry being waited for, given back if it is not made. */
  retryGrantedAt = 0
  /** Set by a stream's reconnect (resume.ts): the call is a retry the budget granted already, not a new call. */
  resumes = false

  // The hedge timer's heap entry.
  timerAt = 0
  timerIndex = -1

  constructor (host: CallHost, request: PreparedRequest, now: number) {
    this.host = host
    this.request = request
    this.clientName = host.name
    this.method = request.method
    this.path = request.path
    this.finalPath = request.path
    this.startedAt = now
    this.#totalEndsAt = now + request.totalTimeout
    const deadlineAt = request.deadlineAt
    this.endsAt = deadlineAt !== undefined && deadlineAt < this.#totalEndsAt ? deadlineAt : this.#totalEndsAt
  }

  /** Admits the call (admission.ts) and starts it, or rejects with its refusal. */
  start (): Promise<HttpResponse> {
    const log = this.log()
    const signal = this.request.signal
    const admission = admit(this.host, this.request.deadlineAt, signal, log, this.startedAt)
    if (isRefusal(admission)) return refuse(this.host, admission, this.method, this.path, signal, log, this.startedAt)
    return this.run(admission)
  }

  /** Runs the call admitted with `permit` and returns its promise. */
  run (permit: PermitValue): Promise<HttpResponse> {
    callBeingStarted = this
    const promise = new Promise<HttpResponse>(captureSettlers)
    callBeingStarted = null
    const host = this.host
    host.counters.requests++
    const now = this.startedAt
    // From here on the call goes on from callbacks that are not its caller's.
    this.scope = callerScope()
    if (this.request.signal !== undefined) watchSignal(this, this.request.signal)
    if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
      awaitToken(this, permit, now)
      return promise
    }
    if (!this.resumes) host.budget?.recordCall(now)
    this.#send(permit, false, now)
    return promise
  }

  // --- attempts ---

  /** Sends an attempt; a `followUp` (a redirect, a resend after a 401) is a request that is not one. */
  #send (permit: PermitValue, isHedge: boolean, now: number, followUp = false): void {
    const host = this.host
    const replicas = host.replicas
    const upstream = replicas.choose(this.#tried, now)
    if (replicas.upstreams.length > 1) (this.#tried ??= []).push(upstream)
    let options = attemptOptions(this.request, upstream, now)
    if (this.request.freshBody !== null) {
      try {
        options = this.request.freshBody.options(options)
      } catch (error) {
        // The caller's body function failed or gave what cannot be sent: nothing goes out.
        host.breaker?.record(permit, Verdict.None, now)
        this.fail(error)
        return
      }
    }
    if (!followUp) {
      if (!isHedge) this.tries++
      this.attempts++
    }
    const attempt = new Attempt(this, host, upstream, options, ++this.#sent, permit, isHedge, now)
    host.timers.add(attempt, attemptTimeout(attempt, this.request, this.startedAt, this.#totalEndsAt, now))
    if (this.#running === null) this.#running = attempt
    else (this.#alsoRunning ??= []).push(attempt)
    host.trackAttempt(attempt)
    upstream.send(attempt)
    if (this.#state === State.Running) armHedge(this, now)
  }

  #removeRunning (attempt: Attempt): void {
    if (this.#running === attempt) {
      this.#running = this.#alsoRunning === null || this.#alsoRunning.length === 0 ? null : this.#alsoRunning.shift() as Attempt
      return
    }
    const others = this.#alsoRunning
    if (others === null) return
    const index = others.indexOf(attempt)
    if (index >= 0) others.splice(index, 1)
  }

  #cancelRunning (cut: CutValue, reason: unknown): void {
    const first = this.#running
    if (first === null) return
    const others = this.#alsoRunning
    this.#running = null
    this.#alsoRunning = null
    first.cancel(cut, reason)
    if (others !== null) for (const attempt of others) attempt.cancel(cut, reason)
  }

  // --- what attempts report ---

  onAttemptHeaders (attempt: Attempt): boolean {
    const host = this.host
    const latency = host.latency
    // One clock read for the latency tracker and the breaker's slow-call rule, and none without them.
    if (latency !== null || (host.breaker !== null && host.breaker.slowCallMs !== Infinity)) {
      attempt.headersAt = host.clock.now()
      // First tries and retries only: hedges go out when the upstream is already slow, and their
      // quick answers would pull the percentile down and send ever more of them.
      if (latency !== null && !attempt.isHedge) latency.record(attempt.headersAt - attempt.startedAt)
    }
    // A settled call has cut its other attempts already: only a running call hears headers.
    const status = attempt.statusCode
    if (status < 200 || status >= 300 || classify(attempt, this, this.request.retry, host) !== SUCCESS) return false
    // A plain 2xx is recorded now and handed out while its body comes.
    this.#removeRunning(attempt)
    if (this.sink === null) {
      recordOutcome(this, attempt, SUCCESS)
    } else {
      // The commit point: from here a stream is bounded by its own timers, not the attempt's.
      if (attempt.timerIndex >= 0) host.timers.remove(attempt)
      this.sink.commit(attempt)
    }
    this.#streaming = attempt
    this.#win(attempt)
    return true
  }

  onBodyEnd (attempt: Attempt): void {
    this.host.untrackAttempt(attempt)
    if (this.#streaming === attempt) this.#streaming = null
    releaseSignal(this)
    if (this.sink !== null) {
      // A stream's one verdict, at its end: a consumer that stops reading found it working.
      recordOutcome(this, attempt, attempt.cut === Cut.Caller ? SUCCESS : classify(attempt, this, this.request.retry, this.host))
      this.host.limit.release()
    }
  }

  onAttemptEnd (attempt: Attempt): void {
    const host = this.host
    host.untrackAttempt(attempt)
    this.#removeRunning(attempt)
    const outcome = classify(attempt, this, this.request.retry, host)
    recordOutcome(this, attempt, outcome)
    if (this.#state === State.Settled) return
    if (outcome.transient) {
      this.#onTransientFailure(attempt, outcome)
      return
    }
    // Another attempt's answer is being followed (a redirect, a resend after a 401): the call goes on.
    if (attempt.cut === Cut.Loser) return
    if (outcome.error === undefined && followUp(this, attempt)) return
    this.#end(attempt, outcome)
  }

  // --- retries (retry-wait.ts decides) ---

  #onTransientFailure (attempt: Attempt, outcome: Outcome): void {
    this.#lastFailure = attempt
    this.#lastOutcome = outcome
    // Another attempt of this call is still out: it may yet answer.
    if (this.#running === null) retryOrEnd(this, attempt, outcome)
  }

  /** Internal, of the waits (retry-wait.ts, rate-limit-wait.ts): the call waits, and close can cut it. */
  beginWait (): void {
    this.#state = State.Waiting
    this.host.waiting.add(this)
  }

  /** Internal, of the waits: the wait is over. */
  endWait (): void {
    this.host.waiting.delete(this)
    this.#state = State.Running
  }

  /** Internal, of the waits: sends a first try or a retry. */
  sendAttempt (permit: PermitValue, now: number): void {
    this.#send(permit, false, now)
  }

  /** Cuts a wait between attempts (close, or the caller's abort). */
  cancelWait (error: unknown): void {
    this.fail(error)
  }

  // --- hedges (hedge.ts decides) ---

  get awaitingAnswer (): boolean {
    return this.#state === State.Running && this.#running !== null
  }

  onTimer (): void {
    hedgeDue(this)
  }

  sendHedge (): void {
    // Due hedges of all calls go out from one callback: each in its own call's context.
    this.scope.runInAsyncScope(sendHedge, null, this)
  }

  sendHedgeAttempt (now: number): void {
    this.#send(Permit.Pass, true, now)
  }

  // --- redirects and the resend after a 401 (follow-up.ts decides) ---

  /** Sends a redirect or the resend after a 401: a request that is not an attempt; another still out is cut. */
  sendFollowUp (permit: PermitValue, now: number): void {
    if (this.#running !== null) this.#cancelRunning(Cut.Loser, loserReason())
    this.#send(permit, false, now, true)
  }

  /** The call waits for a new `auth` token: no attempt of it is out. */
  awaitReauthentication (): void {
    if (this.#running !== null) this.#cancelRunning(Cut.Loser, loserReason())
    this.#state = State.Reauthenticating
    this.host.waiting.add(this)
  }

  /** The new token came: `false` when the call ended meanwhile (close, the caller). */
  resumeAfterReauthentication (): boolean {
    if (this.#state !== State.Reauthenticating) return false
    this.host.waiting.delete(this)
    this.#state = State.Running
    return true
  }

  /** Ends the call with this answer. */
  win (attempt: Attempt): void {
    this.#win(attempt)
  }

  // --- the end ---

  #win (attempt: Attempt): void {
    const counters = this.host.counters
    if (attempt.statusCode >= 500) counters.failures++
    else counters.successes++
    if (attempt.isHedge) counters.hedgeWins++
    this.#settle()
    // Most calls have no other attempt out: no reason to build (an Error is costly).
    if (this.#running !== null) this.#cancelRunning(Cut.Loser, loserReason())
    this.resolve(HttpResponse.from(attempt, this))
  }

  /** The call ends on this attempt: with its response, or with the error its outcome names. */
  #end (attempt: Attempt, outcome: Outcome): void {
    if (outcome.error === undefined) this.#win(attempt)
    else this.fail(outcome.error)
  }

  /** Ends the call with its last transient failure; `skipped` says why no retry came, when it is not the call's own choice. */
  endWithLastFailure (skipped: RetrySkipReason | null): void {
    const failure = this.#lastFailure as Attempt
    if (skipped !== null) {
      this.host.events.retrySkipped({ client: this.clientName, method: this.method, path: this.path, attempt: this.tries, reason: describeFailure(failure), skipped }, this.log())
    }
    this.#end(failure, this.#lastOutcome)
  }

  fail (error: unknown, cut: CutValue = Cut.Loser): void {
    if (this.#state === State.Settled) return
    const host = this.host
    if (error instanceof UpstreamError || error instanceof TimeoutError) host.counters.failures++
    if (error instanceof TimeoutError && error.kind === 'deadline') {
      host.events.deadlineExceeded({ client: this.clientName, method: this.method, path: this.path, attempts: this.attempts }, this.log())
    }
    this.#settle()
    this.#cancelRunning(cut, error)
    this.reject(error)
  }

  #settle (): void {
    const host = this.host
    if (this.#state === State.Waiting) {
      if (this.waitTimer !== null) clearRetryTimer(this)
      else leaveTokenLine(this)
      host.waiting.delete(this)
    } else if (this.#state === State.Reauthenticating) {
      host.waiting.delete(this)
    }
    this.#state = State.Settled
    if (this.timerIndex >= 0) host.timers.remove(this)
    // A committed stream holds its place until its body ends.
    if (this.sink === null || this.#streaming === null) host.limit.release()
    this.#lastFailure = null
    if (this.#streaming === null) releaseSignal(this)
  }

  /** The caller's signal aborted: the call ends with its reason, or the body handed out is cut. */
  onCallerAbort (reason: unknown): void {
    if (this.#state !== State.Settled) this.fail(reason, Cut.Caller)
    else this.#streaming?.cancel(Cut.Caller, reason)
  }

  /** After close's grace period: cut what is still running, bodies included. */
  destroy (): void {
    const error = new ClientClosedError(this)
    if (this.#state !== State.Settled) this.fail(error, Cut.Closed)
    this.#streaming?.cancel(Cut.Closed, error)
  }

  // --- the rate limit (rate-limit-wait.ts decides) ---

  /** The call's turn came: sent in its own context, whichever call or timer handed out the token. */
  onToken (now: number): void {
    this.scope.runInAsyncScope(tokenCame, null, this, now)
  }

  onNoToken (retryAfterMs: number): void {
    this.scope.runInAsyncScope(noTokenCame, null, this, retryAfterMs)
  }

  /** The logger of what the call does: its request's, else the client's. */
  log (): Logger {
    return this.request.inbound?.log ?? this.host.log
  }
}

/** A losing hedge is aborted, not failed. */
function loserReason (): Error {
  return abortReason('another attempt of the call answered first')
}
