import type { AsyncResource } from 'node:async_hooks'
import { callerScope } from '../async-context'
import { Attempt, type AttemptHost, type AttemptOwner, type BodySink, Cut, type CutValue } from './attempt'
import { type CircuitBreaker, Permit, type PermitValue, Verdict, type VerdictValue } from '../policies/circuit-breaker'
import type { Clock, RandomSource } from '../clock'
import type { ConcurrencyLimit } from '../policies/concurrency'
import {
  AuthenticationError, type CallDetails, CircuitOpenError, ClientClosedError, HttpClientError, InvalidRequestError, OverloadedError, RateLimitedError,
  TimeoutError, UpstreamError
} from '../errors'
import type { ClientEvents, RetrySkipReason } from '../telemetry/events'
import { hasHeader, withoutHeader } from '../headers'
import { hedgeAfterPoll, LatencyTracker } from './hedging'
import type { Logger } from '../logger'
import type { ResolvedBreaker } from '../options/resolve'
import { errorCode, isDrop, isRetryStatus, isTransientError, statusVerdict } from './outcome'
import type { Upstream } from '../transport/upstream'
import type { ReplicaSet } from '../policies/replicas'
import { type PreparedRequest, withToken } from './prepare'
import { isRedirect, redirectedRequest } from './redirect'
import { HttpResponse } from './response'
import { askedWait, nextRetry } from './retry'
import { askedPause } from './rate-limit-headers'
import type { RateLimiter, TokenWaiter } from '../policies/rate-limit'
import type { RetryBudget } from '../policies/retry-budget'
import type { Counters } from '../api/stats'
import type { TimedEntry } from './timer-heap'

/** What a call needs of its client. */
export interface CallHost extends AttemptHost {
  readonly clock: Clock
  readonly random: RandomSource
  readonly breaker: CircuitBreaker | null
  readonly breakerSettings: ResolvedBreaker | false
  readonly budget: RetryBudget | null
  readonly limit: ConcurrencyLimit
  readonly rateLimit: RateLimiter | null
  readonly replicas: ReplicaSet
  /** The client's base path, which a redirect must stay under. */
  readonly basePath: string
  /** Made on the first call hedged with `'auto'` (the client's option or a call's own). */
  latency: LatencyTracker | null
  readonly events: ClientEvents
  readonly log: Logger
  readonly counters: Counters
  /** `fastify.close()` has begun: no more waits, retries or hedges. */
  readonly draining: boolean
  readonly closed: boolean
  /** Calls (and streams) waiting between two attempts, so that close can cut their waits. */
  readonly waiting: Set<Waiter>
  trackAttempt(attempt: Attempt): void
  untrackAttempt(attempt: Attempt): void
}

/** Something waiting to send again, that close cuts. */
export interface Waiter extends CallDetails {
  cancelWait(error: unknown): void
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

/** A failure's short name for logs: `status 503`, `ECONNRESET`, `timeout`. */
function describeFailure (attempt: Attempt): string {
  if (attempt.error === undefined) return `status ${attempt.statusCode}`
  if (attempt.cut === Cut.Timeout) return 'timeout'
  // A transient transport failure always has a code: that is how it was found transient.
  return String(errorCode(attempt.error))
}

/**
 * One call: the state machine only. It starts attempts (first try, retries
 * after a wait, hedges beside a slow attempt), hears each attempt's end
 * once, and settles once. What a failure means is decided in outcome.ts,
 * whether and when to retry in retry.ts.
 */
export class Call implements AttemptOwner, TimedEntry, TokenWaiter {
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
  /** Attempts that count toward `maxAttempts`. */
  #tries = 0
  /** Requests sent: attempts, redirects and resends; each attempt's number. */
  #sent = 0
  #hedgesSent = 0
  #running: Attempt | null = null
  #alsoRunning: Attempt[] | null = null
  #lastFailure: Attempt | null = null
  /** The response handed out, while its body is still coming. */
  #streaming: Attempt | null = null
  #openedCircuit = false
  #tried: Upstream[] | null = null
  readonly #startedAt: number
  readonly #totalEndsAt: number
  /** The earlier of the total timeout and the inbound deadline. */
  readonly #endsAt: number
  #waitTimer: unknown = null
  #retryAt = 0
  #callerListener: (() => void) | null = null
  /** The breaker's permit of the attempt waiting for a rate-limit token. */
  #tokenPermit: PermitValue = Permit.Pass
  /** When the budget granted the retry being waited for: given back if it is not made. */
  #retryGrantedAt = 0
  #waitedForToken = false

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
    this.#startedAt = now
    this.#totalEndsAt = now + request.totalTimeout
    const deadlineAt = request.deadlineAt
    this.#endsAt = deadlineAt !== undefined && deadlineAt < this.#totalEndsAt ? deadlineAt : this.#totalEndsAt
  }

  /** Starts the call and returns its promise. */
  start (): Promise<HttpResponse> {
    callBeingStarted = this
    const promise = new Promise<HttpResponse>(captureSettlers)
    callBeingStarted = null
    const host = this.host
    const now = this.#startedAt
    if (this.request.deadlineAt !== undefined && this.request.deadlineAt <= now) {
      // No time left: nothing is sent and neither the breaker nor the budget hears of it.
      host.counters.requests++
      host.counters.failures++
      this.#state = State.Settled
      host.events.deadlineExceeded({ client: this.clientName, method: this.method, path: this.path, attempts: 0 }, this.#log())
      this.reject(new TimeoutError(this, 'deadline', 0))
      return promise
    }
    if (!host.limit.tryAcquire()) {
      host.counters.overloaded++
      this.#state = State.Settled
      const limit = host.limit.limit
      host.events.overloaded(this.clientName, this.method, this.path, limit)
      this.reject(withoutStack(OverloadedError, this, limit))
      return promise
    }
    host.counters.requests++
    const signal = this.request.signal
    if (signal?.aborted === true) {
      this.#settle()
      this.reject(signal.reason)
      return promise
    }
    let permit: PermitValue = Permit.Pass
    if (host.breaker !== null) {
      permit = host.breaker.acquire(now)
      if (permit === Permit.Denied) {
        host.counters.shortCircuited++
        const remainingMs = host.breaker.remainingMs(now)
        host.events.shortCircuited(this.clientName, this.method, this.path, remainingMs)
        this.#settle()
        this.reject(withoutStack(CircuitOpenError, this, remainingMs, host.breaker.openedBy))
        return promise
      }
    }
    // From here on the call goes on from callbacks that are not its caller's.
    this.scope = callerScope()
    if (signal !== undefined) this.#watchSignal(signal)
    if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
      this.#awaitToken(permit, now)
      return promise
    }
    host.budget?.recordCall(now)
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
    let options = this.#optionsFor(upstream, now)
    if (this.request.freshBody !== null) {
      try {
        options = this.request.freshBody.options(options)
      } catch (error) {
        // The caller's body function failed or gave what cannot be sent: nothing goes out.
        host.breaker?.record(permit, Verdict.None, now)
        this.#fail(error)
        return
      }
    }
    if (!followUp) {
      if (!isHedge) this.#tries++
      this.attempts++
    }
    const attempt = new Attempt(this, host, upstream, options, ++this.#sent, permit, isHedge, now)
    let at = now + this.request.timeout
    if (this.#totalEndsAt <= at) {
      at = this.#totalEndsAt
      attempt.timeoutKind = 'total'
      attempt.timeoutMs = this.request.totalTimeout
    } else {
      attempt.timeoutMs = this.request.timeout
    }
    const deadlineAt = this.request.deadlineAt
    if (deadlineAt !== undefined && deadlineAt <= at) {
      at = deadlineAt
      attempt.timeoutKind = 'deadline'
      attempt.timeoutMs = Math.round(deadlineAt - this.#startedAt)
    }
    host.timers.add(attempt, at)
    this.#addRunning(attempt)
    host.trackAttempt(attempt)
    upstream.send(attempt)
    if (this.#state === State.Running) this.#armHedge(now)
  }

  /** The dispatch options of one attempt: the call's own, unless the attempt carries its own deadline or origin. */
  #optionsFor (upstream: Upstream, now: number): PreparedRequest['options'] {
    const options = this.request.options
    const header = this.request.deadlineHeader
    // Own connections know their origin; a given dispatcher is told it.
    const otherOrigin = upstream.given !== null && upstream.origin !== options.origin
    if (header === undefined && !otherOrigin) return options
    let headers = options.headers
    if (header !== undefined) {
      // Forwarded as the whole ms left when this attempt is sent, at least 1; a default value for it gives way.
      headers = hasHeader(headers, header) ? withoutHeader(headers, header) : headers.slice()
      headers.push(header, String(Math.max(1, Math.floor((this.request.deadlineAt as number) - now))))
    }
    // Spelled out rather than spread: this runs for every attempt under a deadline.
    return { origin: upstream.origin, method: options.method, path: options.path, headers, body: options.body }
  }

  #addRunning (attempt: Attempt): void {
    if (this.#running === null) this.#running = attempt
    else (this.#alsoRunning ??= []).push(attempt)
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
    if (status < 200 || status >= 300 || isRetryStatus(status, this.request.retry)) return false
    // The hot path: a 2xx answer is judged now and handed out while its body comes.
    this.#removeRunning(attempt)
    if (this.sink === null) {
      this.#judge(attempt, Verdict.Success)
    } else {
      // The commit point: from here a stream is bounded by its own timers, not the attempt's.
      if (attempt.timerIndex >= 0) this.host.timers.remove(attempt)
      this.sink.commit(attempt)
    }
    this.#streaming = attempt
    this.#win(attempt)
    return true
  }

  onBodyEnd (attempt: Attempt): void {
    this.host.untrackAttempt(attempt)
    if (this.#streaming === attempt) this.#streaming = null
    this.#releaseSignal()
    if (this.sink !== null) {
      // A stream's one verdict, at its end: a consumer that stops reading found it working.
      this.#judge(attempt, attempt.cut === Cut.Caller ? Verdict.Success : this.#verdictOf(attempt))
      this.host.limit.release()
    }
  }

  onAttemptEnd (attempt: Attempt): void {
    const host = this.host
    host.untrackAttempt(attempt)
    this.#removeRunning(attempt)
    const verdict = this.#verdictOf(attempt)
    this.#judge(attempt, verdict)
    if (this.#state === State.Settled) return
    const error = attempt.error
    if (error === undefined) {
      if (isRetryStatus(attempt.statusCode, this.request.retry)) this.#onTransientFailure(attempt)
      else if (!this.#followUp(attempt)) this.#win(attempt)
      return
    }
    switch (attempt.cut) {
      case Cut.Timeout:
        if (attempt.timeoutKind === 'attempt') this.#onTransientFailure(attempt)
        else this.#fail(error)
        return
      case Cut.None:
        if (isTransientError(error)) this.#onTransientFailure(attempt)
        else this.#fail(this.#transportError(error))
        return
      case Cut.Loser:
        // Another attempt's answer is being followed (a redirect, a resend after a 401): the call goes on.
        return
      default:
        this.#fail(error)
    }
  }

  /** The attempt's one verdict on the upstream: nothing for what we cut ourselves. */
  #verdictOf (attempt: Attempt): VerdictValue {
    switch (attempt.cut) {
      case Cut.None:
        if (attempt.error === undefined) return statusVerdict(attempt.statusCode)
        return isRequestFault(attempt.error) ? Verdict.None : Verdict.Failure
      case Cut.Timeout:
        return attempt.timeoutKind === 'deadline' ? Verdict.None : Verdict.Failure
      default:
        return Verdict.None
    }
  }

  /** Tells the breaker, the replica set, the adaptive limit and the latency tracker, once per attempt. */
  #judge (attempt: Attempt, verdict: VerdictValue): void {
    const host = this.host
    const status = attempt.error === undefined ? attempt.statusCode : 0
    const breaker = host.breaker
    // A plain success needs no clock read: the breaker and the replica set only time failures,
    // unless a ratio rule buckets successes too (then the time of the headers, when read, serves).
    let now = 0
    if (verdict !== Verdict.Success || status === 429) now = host.clock.now()
    else if (breaker !== null && breaker.clocked) now = attempt.headersAt === 0 ? host.clock.now() : attempt.headersAt
    if (attempt.cut === Cut.Loser && attempt.headers === null && !attempt.isHedge) host.latency?.record(now - attempt.startedAt)
    // Time to headers, or to the failure that came instead: read by the slow-call rule only.
    breaker?.record(attempt.permit, verdict, now, (attempt.headersAt === 0 ? now : attempt.headersAt) - attempt.startedAt)
    host.replicas.record(attempt.upstream, verdict, now)
    if (host.rateLimit !== null && attempt.headers !== null) this.#hearRateLimit(host.rateLimit, attempt)
    if (verdict === Verdict.None) return
    if (host.limit.adaptive) host.limit.onAttempt(isDrop(status, attempt.error, attempt.cut === Cut.Timeout))
    const settings = host.breakerSettings
    // With a rate limit, a 429's Retry-After pauses the limit instead.
    if (breaker !== null && settings !== false && settings.openOnRetryAfter && (status === 503 || (status === 429 && host.rateLimit === null))) {
      const asked = askedWait(this.request.retry, status, attempt.headers?.['retry-after'], this.#wallNow())
      if (asked !== undefined && asked > 0) {
        breaker.openFor(Math.min(asked, 10 * settings.recoveryMs), now)
        this.#openedCircuit = true
      }
    }
  }

  // --- retries and hedges ---

  #onTransientFailure (attempt: Attempt): void {
    this.#lastFailure = attempt
    // Another attempt of this call is still out: it may yet answer.
    if (this.#running !== null) return
    const host = this.host
    const retry = this.request.retry
    if (retry === false || retry.maxAttempts === 1 || host.closed || this.request.signal?.aborted === true) {
      this.#endWithLastFailure(null)
      return
    }
    if (host.draining) {
      this.#endWithLastFailure('closing')
      return
    }
    const now = host.clock.now()
    const decision = nextRetry({
      retry,
      method: this.request.method,
      hasIdempotencyKey: this.request.hasIdempotencyKey,
      replayable: this.request.replayable,
      attempts: this.#tries,
      statusCode: attempt.error === undefined ? attempt.statusCode : 0,
      retryAfter: attempt.headers?.['retry-after'],
      error: attempt.error,
      endsAt: this.#endsAt,
      openedByThisAnswer: this.#openedCircuit
    }, host, now, this.#wallNow())
    this.#openedCircuit = false
    this.#retryGrantedAt = now
    if (typeof decision !== 'number') {
      if (decision === 'budget') host.counters.retriesDenied++
      this.#endWithLastFailure(decision)
      return
    }
    host.events.retry({ client: this.clientName, method: this.method, path: this.path, attempt: this.#tries, reason: describeFailure(attempt), waitMs: decision }, this.#log())
    this.#state = State.Waiting
    if (this.timerIndex >= 0) host.timers.remove(this)
    this.#retryAt = now + decision
    host.waiting.add(this)
    this.#waitTimer = host.clock.setTimer(() => { this.#afterWait() }, decision)
    // Between attempts no socket holds the process open: the wait must, or a
    // script whose upstream is down exits mid-call. close() clears it.
    ;(this.#waitTimer as { ref?: () => unknown }).ref?.()
  }

  #afterWait (): void {
    this.#waitTimer = null
    const host = this.host
    host.waiting.delete(this)
    // Settling clears this timer: it fires only for a call still waiting.
    this.#state = State.Running
    // The timer may fire a hair before the time it was set for; the breaker must see the full wait.
    const now = Math.max(host.clock.now(), this.#retryAt)
    let permit: PermitValue = Permit.Pass
    if (host.breaker !== null) {
      permit = host.breaker.acquire(now)
      if (permit === Permit.Denied) {
        this.#endWithLastFailure('circuit')
        return
      }
    }
    if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
      this.#awaitToken(permit, now)
      return
    }
    host.counters.retries++
    this.#send(permit, false, now)
  }

  /** Cuts a wait between attempts (close, or the caller's abort). */
  cancelWait (error: unknown): void {
    this.#fail(error)
  }

  #armHedge (now: number): void {
    const hedge = this.request.hedge
    if (hedge === false || this.timerIndex >= 0 || this.#hedgesSent >= hedge.maxHedges || !this.request.replayable) return
    // A call's own 'auto' on a client that does not hedge by 'auto' starts the client's sampling.
    const delay = hedge.delayMs === 'auto' ? (this.host.latency ??= new LatencyTracker()).p95 : hedge.delayMs
    if (delay === Infinity) return
    const at = now + delay
    if (at < this.#endsAt) this.host.timers.add(this, at)
  }

  /** The hedge delay passed without an answer: the hedge goes out once the sockets have been read. */
  onTimer (): void {
    if (this.#state === State.Running && this.#running !== null) hedgeAfterPoll(this)
  }

  /** Sends the hedge, unless the call was answered (or ended) in the meantime. */
  sendHedge (): void {
    // Due hedges of all calls go out from one callback: each in its own call's context.
    this.scope.runInAsyncScope(this.#sendHedge, this)
  }

  #sendHedge (): void {
    const host = this.host
    if (this.#state !== State.Running || this.#running === null || host.draining || host.closed) return
    const now = host.clock.now()
    // Armed only before the call's end (#armHedge) and sent in the same turn of the event loop: a hedge is cut with its call.
    if (host.breaker !== null && host.breaker.state(now) !== 'closed') return
    if (host.budget !== null && !host.budget.tryAcquire(now)) return
    // A hedge is for a slow answer now: it never waits in line for a token.
    if (host.rateLimit !== null && !host.rateLimit.tryTake(now)) {
      host.budget?.refund(now, now)
      return
    }
    this.#hedgesSent++
    host.counters.hedges++
    const delayMs = Math.round(now - this.#startedAt)
    host.events.hedge({ client: this.clientName, method: this.method, path: this.path, attempt: this.attempts + 1, delayMs }, this.#log())
    this.#send(Permit.Pass, true, now)
  }

  // --- redirects and the resend after a 401 ---

  /** Follows a redirect or resends after a 401 when the call may; `false` to take the answer as it is. */
  #followUp (attempt: Attempt): boolean {
    const status = attempt.statusCode
    const request = this.request
    if (status === 401) {
      if (request.tokenUse === null || !request.replayable) return false
      this.#reauthenticate(attempt, request.tokenUse)
      return true
    }
    if (!isRedirect(status) || request.followRedirects === 0) return false
    const redirected = redirectedRequest(request, status, attempt.headers?.location, attempt.upstream.origin, this.host.basePath)
    if (redirected === null) return false
    const now = this.host.clock.now()
    const permit = this.#followUpPermit(now)
    if (permit === Permit.Denied) return false
    this.request = redirected.request
    this.finalPath = redirected.path
    this.redirects++
    this.host.counters.redirects++
    this.#cancelOthers()
    this.#send(permit, false, now, true)
    return true
  }

  /** A new token, shared with every call that got a 401 from the same one; then the one resend. */
  #reauthenticate (answer: Attempt, use: NonNullable<PreparedRequest['tokenUse']>): void {
    this.#cancelOthers()
    this.#state = State.Reauthenticating
    this.host.waiting.add(this)
    use.source.refresh(use.token).then((token) => {
      if (this.#state !== State.Reauthenticating) return
      this.host.waiting.delete(this)
      this.#state = State.Running
      const now = this.host.clock.now()
      const permit = this.#followUpPermit(now)
      if (permit === Permit.Denied) {
        this.#win(answer)
        return
      }
      this.request = withToken(this.request, use.source, token, true)
      this.#send(permit, false, now, true)
    }, (error: unknown) => {
      this.#fail(new AuthenticationError({ clientName: this.clientName, method: this.method, path: this.path, attempts: this.attempts, cause: error }))
    })
  }

  /**
   * A follow-up is sent only with the breaker's permission and, under a rate
   * limit, a token there at once (it does not wait in line): otherwise the
   * call takes the answer it has.
   */
  #followUpPermit (now: number): PermitValue {
    const host = this.host
    const permit = host.breaker === null ? Permit.Pass : host.breaker.acquire(now)
    if (permit === Permit.Denied || host.rateLimit === null || host.rateLimit.tryTake(now)) return permit
    host.breaker?.record(permit, Verdict.None, now)
    return Permit.Denied
  }

  /** A hedge still out when another attempt's answer is followed up is not needed any more. */
  #cancelOthers (): void {
    if (this.#running !== null) this.#cancelRunning(Cut.Loser, loserReason())
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
    this.resolve(new HttpResponse(attempt, this))
  }

  #endWithLastFailure (skipped: RetrySkipReason | null): void {
    const failure = this.#lastFailure as Attempt
    if (skipped !== null) {
      this.host.events.retrySkipped({ client: this.clientName, method: this.method, path: this.path, attempt: this.#tries, reason: describeFailure(failure), skipped }, this.#log())
    }
    if (failure.error === undefined) {
      this.#win(failure)
      return
    }
    this.#fail(failure.error instanceof HttpClientError ? failure.error : this.#transportError(failure.error))
  }

  #transportError (error: unknown): HttpClientError {
    const details = { clientName: this.clientName, method: this.method, path: this.path, attempts: this.attempts, cause: error }
    if (isRequestFault(error)) return new InvalidRequestError(details, (error as Error).message)
    return new UpstreamError(details)
  }

  #fail (error: unknown, cut: CutValue = Cut.Loser): void {
    if (this.#state === State.Settled) return
    const host = this.host
    if (error instanceof UpstreamError || error instanceof TimeoutError) host.counters.failures++
    if (error instanceof TimeoutError && error.kind === 'deadline') {
      host.events.deadlineExceeded({ client: this.clientName, method: this.method, path: this.path, attempts: this.attempts }, this.#log())
    }
    this.#settle()
    this.#cancelRunning(cut, error)
    this.reject(error)
  }

  #settle (): void {
    const host = this.host
    if (this.#state === State.Waiting) {
      if (this.#waitTimer !== null) {
        host.clock.clearTimer(this.#waitTimer)
        this.#waitTimer = null
      } else {
        // Cut while waiting for a token (the caller, close): it leaves the line and gives back what it holds.
        host.rateLimit?.cancel(this)
        this.#giveBack(host.clock.now())
      }
      host.waiting.delete(this)
    } else if (this.#state === State.Reauthenticating) {
      host.waiting.delete(this)
    }
    this.#state = State.Settled
    if (this.timerIndex >= 0) host.timers.remove(this)
    // A committed stream holds its place until its body ends.
    if (this.sink === null || this.#streaming === null) host.limit.release()
    this.#lastFailure = null
    if (this.#streaming === null) this.#releaseSignal()
  }

  /** After close's grace period: cut what is still running, bodies included. */
  destroy (): void {
    const error = new ClientClosedError(this)
    if (this.#state !== State.Settled) this.#fail(error, Cut.Closed)
    this.#streaming?.cancel(Cut.Closed, error)
  }

  // --- the rate limit ---

  /** No token at once: wait in line if the turn comes in time, else no attempt. */
  #awaitToken (permit: PermitValue, now: number): void {
    const host = this.host
    this.#tokenPermit = permit
    // From close on, nothing waits.
    const retryAfterMs = host.draining ? -1 : (host.rateLimit as RateLimiter).wait(this, now, this.#endsAt)
    if (retryAfterMs === 0) {
      if (!this.#waitedForToken) host.counters.rateLimitWaits++
      this.#waitedForToken = true
      this.#state = State.Waiting
      host.waiting.add(this)
      return
    }
    this.#noToken(retryAfterMs, now)
  }

  /** The call's turn came: sent in its own context, whichever call or timer handed out the token. */
  onToken (now: number): void {
    this.scope.runInAsyncScope(this.#onToken, this, now)
  }

  #onToken (now: number): void {
    const host = this.host
    host.waiting.delete(this)
    this.#state = State.Running
    if (this.attempts === 0) host.budget?.recordCall(now)
    else host.counters.retries++
    this.#send(this.#tokenPermit, false, now)
  }

  onNoToken (retryAfterMs: number): void {
    this.scope.runInAsyncScope(this.#onNoToken, this, retryAfterMs)
  }

  #onNoToken (retryAfterMs: number): void {
    this.host.waiting.delete(this)
    this.#state = State.Running
    this.#noToken(retryAfterMs, this.host.clock.now())
  }

  /** The attempt is not sent: the first refuses the call, a retry is a retry not made. Neither breaker nor budget counts it. */
  #noToken (retryAfterMs: number, now: number): void {
    const host = this.host
    this.#giveBack(now)
    if (retryAfterMs < 0) {
      this.#fail(new ClientClosedError(this))
    } else if (this.attempts > 0) {
      this.#endWithLastFailure('rate-limited')
    } else {
      host.counters.rateLimited++
      host.events.rateLimited({ client: this.clientName, method: this.method, path: this.path, retryAfterMs }, this.#log())
      this.#fail(withoutStack(RateLimitedError, this, retryAfterMs))
    }
  }

  /** What earlier stages lent the attempt not sent: a half-open probe slot, a retry's budget. */
  #giveBack (now: number): void {
    this.host.breaker?.record(this.#tokenPermit, Verdict.None, now)
    if (this.attempts > 0) this.host.budget?.refund(this.#retryGrantedAt, now)
  }

  /** The upstream's word on its rate limit pauses the client's, unless the call chose not to trust it. */
  #hearRateLimit (limiter: RateLimiter, attempt: Attempt): void {
    const retry = this.request.retry
    if (retry !== false && !retry.respectRetryAfter) return
    const asked = askedPause(attempt.statusCode, attempt.headers as NonNullable<Attempt['headers']>, this.#wallNow())
    if (asked === null || !limiter.pause(asked.ms, this.host.clock.now())) return
    this.host.events.rateLimitPaused({ client: this.clientName, pausedMs: Math.round(asked.ms), reason: asked.reason }, this.#log())
  }

  // --- the caller's signal ---

  #watchSignal (signal: AbortSignal): void {
    this.#callerListener = () => {
      const reason = signal.reason
      if (this.#state !== State.Settled) this.#fail(reason, Cut.Caller)
      else this.#streaming?.cancel(Cut.Caller, reason)
    }
    signal.addEventListener('abort', this.#callerListener)
  }

  #releaseSignal (): void {
    if (this.#callerListener === null) return
    this.request.signal?.removeEventListener('abort', this.#callerListener)
    this.#callerListener = null
  }

  #log (): Logger {
    return this.request.inbound?.log ?? this.host.log
  }

  #wallNow (): number {
    const clock = this.host.clock
    return clock.wallNow === undefined ? clock.now() : clock.wallNow()
  }
}

/** undici refused the request as given (a bad header, a body of the wrong length): not the upstream's fault. */
function isRequestFault (error: unknown): boolean {
  const code = errorCode(error)
  return code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED' || code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'
}

/** A losing hedge is aborted, not failed: tracers record an AbortError as no error. */
function loserReason (): Error {
  // Without a stack: Node reads the stack of every error a socket is destroyed with, and a stack says nothing here.
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  const reason = new DOMException('another attempt of the call answered first', 'AbortError')
  Error.stackTraceLimit = limit
  return reason
}

/** Refusals come fast and in bulk (open circuit, overload): skip the stack trace. */
export function withoutStack<E, X> (ErrorClass: new (details: CallDetails, figure: number, extra?: X) => E, details: CallDetails, figure: number, extra?: X): E {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  const error = new ErrorClass(details, figure, extra)
  Error.stackTraceLimit = limit
  return error
}
