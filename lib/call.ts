import type { Dispatcher } from 'undici'
import { backoffDelay, retryAfterDelay } from './backoff'
import { type CircuitBreaker, Permit, type PermitValue } from './circuit-breaker'
import type { Clock, RandomSource } from './clock'
import type { DeadlineEntry, DeadlineQueue } from './deadline-queue'
import {
  CircuitOpenError, ClientClosedError, HttpClientError, InvalidRequestError,
  ResponseTooLargeError, TimeoutError, type TimeoutKind, UpstreamError
} from './errors'
import { type ClientEvents, dispatching, type RetrySkipReason } from './events'
import type { ResolvedRetry } from './options'
import { bodyError, HttpResponse, readBody, type ResponseBody } from './response'
import type { RetryBudget } from './retry-budget'
import { errorCode, isRetryStatus, isTransientError, methodAllowsRetry } from './retry-policy'

/** Counters behind `stats()`. */
export class Counters {
  requests = 0
  successes = 0
  failures = 0
  retries = 0
  retriesDenied = 0
  shortCircuited = 0
  inFlight = 0
}

/** What a call needs of its client. */
export interface ClientCore {
  readonly name: string
  readonly clock: Clock
  readonly random: RandomSource
  readonly dispatcher: Dispatcher
  readonly breaker: CircuitBreaker | null
  readonly budget: RetryBudget | null
  readonly events: ClientEvents
  readonly counters: Counters
  readonly maxResponseBytes: number | undefined
  readonly closed: boolean
  /** Calls waiting between two attempts, so that close can cut their waits. */
  readonly waiting: Set<Call>
  /** Unsettled calls, kept only for a given dispatcher, which close cannot destroy. */
  readonly active: Set<Call> | null
  queueFor(durationMs: number): DeadlineQueue
  onCallSettled(): void
}

/** undici's request options, as a call sends them. */
export interface UndiciRequest {
  origin: string
  method: string
  path: string
  headers: string[]
  body: Dispatcher.DispatchOptions['body']
  signal: Call
  opaque: Call
}

interface UndiciResult {
  opaque: Call
  statusCode?: number
  headers?: Record<string, string | string[] | undefined>
  body?: ResponseBody
}

/** Why an attempt was aborted by us. */
const Abort = { None: 0, AttemptTimeout: 1, TotalTimeout: 2, Caller: 3, Closed: 4 } as const
type AbortCause = typeof Abort[keyof typeof Abort]

/** The failure that ended the last attempt: a response or an error. */
interface Failure {
  statusCode: number | undefined
  headers: Record<string, string | string[] | undefined> | undefined
  body: ResponseBody | undefined
  buffered: Buffer | undefined
  error: unknown
}

// `new Promise` needs an executor; this one is shared by every call instead of
// a closure per call. It runs synchronously, so a module variable hands it the call.
let callBeingCreated: Call | null = null
function captureSettlers (resolve: (response: HttpResponse) => void, reject: (error: unknown) => void): void {
  const call = callBeingCreated as Call
  call.resolve = resolve
  call.reject = reject
}

// undici calls this with `opaque` set to the call: no closure per attempt.
function onUndiciResult (error: Error | null, result: UndiciResult): void {
  result.opaque.onResult(error, result)
}

function noop (): void {}

/**
 * One call through the pipeline: retry (with its budget) → circuit breaker
 * → attempt timeout → undici. The call is its own undici `signal` (undici
 * only needs `aborted`, `reason` and the listener methods) and its own
 * deadline-queue entry, so an attempt allocates no AbortController, timer or
 * closure.
 */
export class Call implements DeadlineEntry {
  attempts = 0
  settled = false
  resolve: (response: HttpResponse) => void = noop
  reject: (error: unknown) => void = noop

  // The undici signal interface.
  aborted = false
  reason: unknown = undefined
  private abortListener: (() => void) | null = null
  private abortedBy: AbortCause = Abort.None

  // The deadline-queue entry.
  deadlineAt = 0
  deadlinePrev: DeadlineEntry | null = null
  deadlineNext: DeadlineEntry | null = null
  deadlineQueue: DeadlineQueue | null = null
  private deadlineKind: TimeoutKind = 'attempt'
  private deadlineMs = 0
  private oneOffTimer: unknown = null

  private permit: PermitValue = Permit.Pass
  private readonly totalDeadline: number
  private readonly request: UndiciRequest
  private lastFailure: Failure | null = null
  private waitTimer: unknown = null
  private callerAbortListener: (() => void) | null = null

  readonly clientName: string
  readonly maxResponseBytes: number | undefined

  constructor (
    private readonly client: ClientCore,
    readonly method: string,
    /** The path as the caller gave it, for errors and logs. */
    readonly path: string,
    fullPath: string,
    headers: string[],
    body: Dispatcher.DispatchOptions['body'],
    origin: string,
    private readonly retry: ResolvedRetry | false,
    private readonly timeout: number,
    private readonly totalTimeout: number,
    /** The queue for the first attempt: `min(timeout, totalTimeout)`. */
    private readonly firstQueue: DeadlineQueue,
    private readonly replayable: boolean,
    private readonly hasIdempotencyKey: boolean,
    private readonly callerSignal: AbortSignal | undefined,
    now: number
  ) {
    this.clientName = client.name
    this.maxResponseBytes = client.maxResponseBytes
    this.totalDeadline = now + totalTimeout
    this.request = { origin, method, path: fullPath, headers, body, signal: this, opaque: this }
  }

  /** Starts the call and returns its promise. */
  start (now: number): Promise<HttpResponse> {
    callBeingCreated = this
    const promise = new Promise<HttpResponse>(captureSettlers)
    callBeingCreated = null
    const counters = this.client.counters
    counters.requests++
    counters.inFlight++
    this.client.active?.add(this)
    this.client.budget?.recordCall(now)
    if (this.callerSignal !== undefined) this.watchCallerSignal(this.callerSignal)
    if (!this.settled) this.attempt(now)
    return promise
  }

  // --- undici's view of the call as an AbortSignal ---

  addEventListener (_type: 'abort', listener: () => void): void {
    this.abortListener = listener
  }

  /** undici removes its listener once the response body is closed: the attempt's deadline is over. */
  removeEventListener (_type: 'abort', listener: () => void): void {
    if (this.abortListener !== listener) return
    this.abortListener = null
    this.clearDeadline()
    if (this.settled) this.releaseCallerSignal()
  }

  private abortAttempt (by: AbortCause, reason: unknown): void {
    this.abortedBy = by
    this.aborted = true
    this.reason = reason
    const listener = this.abortListener
    this.abortListener = null
    if (listener !== null) listener()
  }

  // --- deadlines ---

  private startDeadline (now: number): void {
    if (this.attempts === 1) {
      this.deadlineMs = this.firstQueue.durationMs
      this.deadlineKind = this.timeout <= this.totalTimeout ? 'attempt' : 'total'
      this.firstQueue.add(this, now)
      return
    }
    const remaining = this.totalDeadline - now
    if (this.timeout <= remaining) {
      this.deadlineMs = this.timeout
      this.deadlineKind = 'attempt'
      this.client.queueFor(this.timeout).add(this, now)
    } else {
      this.deadlineMs = this.totalTimeout
      this.deadlineKind = 'total'
      this.oneOffTimer = this.client.clock.setTimer(() => {
        this.oneOffTimer = null
        this.onDeadline()
      }, Math.max(0, remaining))
    }
  }

  private clearDeadline (): void {
    if (this.deadlineQueue !== null) this.deadlineQueue.remove(this)
    if (this.oneOffTimer !== null) {
      this.client.clock.clearTimer(this.oneOffTimer)
      this.oneOffTimer = null
    }
  }

  onDeadline (): void {
    if (this.settled) this.releaseCallerSignal()
    const error = new TimeoutError(this, this.deadlineKind, this.deadlineKind === 'attempt' ? this.deadlineMs : this.totalTimeout)
    this.abortAttempt(this.deadlineKind === 'attempt' ? Abort.AttemptTimeout : Abort.TotalTimeout, error)
  }

  // --- attempts ---

  private attempt (now: number): void {
    const breaker = this.client.breaker
    if (breaker !== null) {
      const permit = breaker.acquire(now)
      if (permit === Permit.Denied) {
        if (this.attempts === 0) {
          this.client.counters.shortCircuited++
          this.fail(this.circuitOpenError(breaker.remainingMs(now)))
        } else {
          this.endWithLastFailure('circuit')
        }
        return
      }
      this.permit = permit
    }
    this.attempts++
    this.aborted = false
    this.reason = undefined
    this.abortedBy = Abort.None
    this.startDeadline(now)
    dispatching.attempt = this.attempts
    try {
      this.client.dispatcher.request(this.request as unknown as Dispatcher.RequestOptions, onUndiciResult as never)
    } finally {
      dispatching.attempt = 0
    }
  }

  /** undici's answer to the current attempt. */
  onResult (error: Error | null, result: UndiciResult): void {
    if (error !== null) {
      this.onAttemptError(error)
      return
    }
    const statusCode = result.statusCode as number
    const retry = this.retry
    // The hot path: a 2xx that no setting asks to retry.
    if (statusCode >= 200 && statusCode < 300 && (retry === false || statusCode < retry.lowestRetryStatus)) {
      this.client.breaker?.onSuccess(this.permit)
      this.client.counters.successes++
      this.settle()
      this.resolve(new HttpResponse(statusCode, result.headers as never, result.body as ResponseBody, this.attempts, this))
      return
    }
    this.onUnusualResponse(statusCode, result.headers as Record<string, string | string[] | undefined>, result.body as ResponseBody)
  }

  /** A non-2xx response, or one in `statusCodes`: read its body, then retry or resolve. */
  private onUnusualResponse (statusCode: number, headers: Record<string, string | string[] | undefined>, body: ResponseBody): void {
    const now = this.client.clock.now()
    const breaker = this.client.breaker
    if (breaker !== null) {
      if (statusCode >= 500) breaker.onFailure(this.permit, now)
      else breaker.onSuccess(this.permit)
    }
    readBody(body, headers, this.maxResponseBytes, this).then((buffered) => {
      this.clearDeadline()
      const failure: Failure = { statusCode, headers, body, buffered, error: undefined }
      if (this.retry !== false && isRetryStatus(statusCode, this.retry)) {
        this.retryOrEnd(failure, `status ${statusCode}`)
      } else {
        this.lastFailure = failure
        this.endWithLastFailure(null)
      }
    }, (error: unknown) => {
      this.clearDeadline()
      this.onAttemptError(error)
    })
  }

  private onAttemptError (error: unknown): void {
    this.clearDeadline()
    this.abortListener = null
    const breaker = this.client.breaker
    const now = this.client.clock.now()
    switch (this.abortedBy) {
      case Abort.Caller:
        breaker?.release(this.permit)
        this.fail(this.reason)
        return
      case Abort.Closed:
        breaker?.release(this.permit)
        this.fail(new ClientClosedError(this))
        return
      case Abort.TotalTimeout:
        breaker?.onFailure(this.permit, now)
        this.fail(this.reason)
        return
      case Abort.AttemptTimeout:
        breaker?.onFailure(this.permit, now)
        this.retryOrEnd({ statusCode: undefined, headers: undefined, body: undefined, buffered: undefined, error: this.reason }, 'timeout')
        return
    }
    if (error instanceof ClientClosedError) {
      // The pool was destroyed after close's grace period.
      breaker?.release(this.permit)
      this.fail(new ClientClosedError(this))
      return
    }
    if (error instanceof HttpClientError) {
      breaker?.release(this.permit)
      this.fail(error)
      return
    }
    const code = errorCode(error)
    if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED' || code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
      breaker?.release(this.permit)
      this.fail(new InvalidRequestError({ clientName: this.clientName, method: this.method, path: this.path, attempts: this.attempts, cause: error }, (error as Error).message))
      return
    }
    if (code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') {
      breaker?.release(this.permit)
      this.fail(new ResponseTooLargeError(this, this.maxResponseBytes ?? 0))
      return
    }
    breaker?.onFailure(this.permit, now)
    const failure: Failure = { statusCode: undefined, headers: undefined, body: undefined, buffered: undefined, error }
    if (isTransientError(error)) {
      this.retryOrEnd(failure, code as string)
    } else {
      this.lastFailure = failure
      this.endWithLastFailure(null)
    }
  }

  // --- retries ---

  /** A transient failure: wait and try again, or end with it and say why not. */
  private retryOrEnd (failure: Failure, reason: string): void {
    this.lastFailure = failure
    const retry = this.retry
    // maxAttempts 1 turns retries off like `retry: false`: nothing to report.
    if (retry === false || retry.maxAttempts === 1 || this.client.closed || this.callerSignal?.aborted === true) {
      this.endWithLastFailure(null)
      return
    }
    const skipped = this.whyNoRetry(retry, failure)
    if (skipped !== null) {
      this.endWithLastFailure(skipped, reason)
      return
    }
    const now = this.client.clock.now()
    const wait = this.waitBeforeRetry(retry, failure, now)
    if (now + wait >= this.totalDeadline) {
      this.endWithLastFailure('deadline', reason)
      return
    }
    const breaker = this.client.breaker
    if (breaker !== null && breaker.state(now) === 'open') {
      this.endWithLastFailure('circuit', reason)
      return
    }
    const budget = this.client.budget
    if (budget !== null && !budget.tryAcquire(now)) {
      this.client.counters.retriesDenied++
      this.endWithLastFailure('budget', reason)
      return
    }
    this.client.events.retry({ client: this.clientName, method: this.method, path: this.path, attempt: this.attempts, reason, waitMs: wait })
    this.client.waiting.add(this)
    this.waitTimer = this.client.clock.setTimer(() => this.afterWait(), wait)
    // Between attempts no socket holds the process open: the wait must, or a
    // script whose upstream is down exits mid-call. close() clears it.
    ;(this.waitTimer as { ref?: () => unknown }).ref?.()
  }

  private whyNoRetry (retry: ResolvedRetry, failure: Failure): RetrySkipReason | null {
    if (this.attempts >= retry.maxAttempts) return 'attempts'
    if (!methodAllowsRetry(this.method, retry, this.hasIdempotencyKey, failure.statusCode, failure.error)) return 'method'
    if (!this.replayable) return 'stream-body'
    return null
  }

  private waitBeforeRetry (retry: ResolvedRetry, failure: Failure, now: number): number {
    if (retry.respectRetryAfter && (failure.statusCode === 429 || failure.statusCode === 503)) {
      const asked = retryAfterDelay(failure.headers?.['retry-after'], now)
      if (asked !== undefined) return asked
    }
    return backoffDelay(this.attempts, retry, this.client.random)
  }

  private afterWait (): void {
    this.waitTimer = null
    this.client.waiting.delete(this)
    if (this.settled) return
    // An open circuit may still refuse the retry: count only one that is sent.
    const before = this.attempts
    this.attempt(this.client.clock.now())
    if (this.attempts > before) this.client.counters.retries++
  }

  /** Cuts a wait between attempts (close, or the caller's abort). */
  cancelWait (error: unknown): void {
    if (this.waitTimer === null) return
    this.client.clock.clearTimer(this.waitTimer)
    this.waitTimer = null
    this.client.waiting.delete(this)
    this.fail(error)
  }

  // --- the end ---

  private endWithLastFailure (skipped: RetrySkipReason | null, reason?: string): void {
    if (skipped !== null && this.retry !== false) {
      this.client.events.retrySkipped({ client: this.clientName, method: this.method, path: this.path, attempt: this.attempts, reason: reason ?? 'failure', skipped })
    }
    const failure = this.lastFailure as Failure
    if (failure.statusCode !== undefined) {
      if (failure.statusCode >= 500) this.client.counters.failures++
      else this.client.counters.successes++
      this.settle()
      this.resolve(new HttpResponse(failure.statusCode, failure.headers as never, failure.body as ResponseBody, this.attempts, this, failure.buffered))
      return
    }
    const error = failure.error
    this.fail(error instanceof HttpClientError ? error : new UpstreamError({ clientName: this.clientName, method: this.method, path: this.path, attempts: this.attempts, cause: error }))
  }

  private fail (error: unknown): void {
    if (this.settled) return
    const final = error instanceof HttpClientError || error === this.callerSignal?.reason ? error : bodyError(error, this)
    // Only the upstream's failures count; a caller's abort or a refused call do not.
    if (final instanceof UpstreamError || final instanceof TimeoutError) this.client.counters.failures++
    this.settle()
    this.reject(final)
  }

  private settle (): void {
    this.settled = true
    this.lastFailure = null
    // While a resolved response's body streams, the caller's abort must still
    // reach it; the listener goes once undici lets go of the body.
    if (this.abortListener === null) this.releaseCallerSignal()
    this.client.counters.inFlight--
    this.client.active?.delete(this)
    this.client.onCallSettled()
  }

  private circuitOpenError (remainingMs: number): CircuitOpenError {
    // Refusals come fast and in bulk while the circuit is open: skip the stack.
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    const error = new CircuitOpenError(this, remainingMs)
    Error.stackTraceLimit = limit
    return error
  }

  /** After close's grace period: abort what is still running. */
  destroy (): void {
    if (this.settled) {
      // The response is out; only its body may still be streaming.
      if (this.abortListener !== null) this.abortAttempt(Abort.Closed, new ClientClosedError(this))
      return
    }
    if (this.waitTimer !== null) {
      this.cancelWait(new ClientClosedError(this))
      return
    }
    this.abortAttempt(Abort.Closed, new ClientClosedError(this))
  }

  private watchCallerSignal (signal: AbortSignal): void {
    if (signal.aborted) {
      this.fail(signal.reason)
      return
    }
    this.callerAbortListener = () => {
      if (this.waitTimer !== null) {
        this.cancelWait(signal.reason)
      } else if (!this.settled) {
        this.abortAttempt(Abort.Caller, signal.reason)
      } else if (this.abortListener !== null) {
        this.clearDeadline()
        this.releaseCallerSignal()
        this.abortAttempt(Abort.Caller, signal.reason)
      }
    }
    signal.addEventListener('abort', this.callerAbortListener)
  }

  private releaseCallerSignal (): void {
    if (this.callerAbortListener === null) return
    this.callerSignal?.removeEventListener('abort', this.callerAbortListener)
    this.callerAbortListener = null
  }
}
