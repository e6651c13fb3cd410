import type { AsyncResource } from 'node:async_hooks'
import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import type { PermitValue } from '../policies/circuit-breaker'
import { bodyError, type BodyBuffer, bufferChunk, endBody, failBody } from './attempt-body'
import { type CallDetails, ResponseTooLargeError, type TimeoutKind, TimeoutError } from '../errors'
import { Cut, type CutValue, type DispatchController, Phase, type PhaseValue } from './attempt-state'
import { dispatching } from '../telemetry/events'
import { type Connection, handlerFrames } from '../transport/connections'
import type { Sendable, Upstream } from '../transport/upstream'
import type { TimedEntry, TimerHeap } from './timer-heap'

// The hot path of every call: an attempt is its own undici handler, its own
// timer-heap entry, its own admission-queue entry and its own body buffer
// (attempt-body.ts reads it), so sending one allocates nothing else.
// Decisions live in call.ts.

/**
 * Takes a committed stream's body instead of the attempt's buffer
 * (`client.stream()`, lib/streaming): every chunk, then its end or failure.
 */
export interface BodySink {
  /** The call took this attempt's 2xx answer: set `attempt.sink` to take its chunks. */
  commit(attempt: Attempt): void
  onData(chunk: Buffer): void
  onEnd(): void
  /** The error a reader sees: ours as it is, a caller's reason as given, undici's wrapped. */
  onError(error: unknown): void
}

/** What an attempt needs of the client it belongs to. */
export interface AttemptHost {
  readonly name: string
  readonly timers: TimerHeap
  readonly maxResponseBytes: number | undefined
  readonly clock: { now(): number }
}

/** What an attempt needs of its call. */
export interface AttemptOwner extends CallDetails {
  readonly clientName: string
  readonly method: string
  readonly path: string
  /** The async context of the code that made the call: what the attempt does for it runs there. */
  readonly scope: AsyncResource
  /** A stream's sink: its body is bounded per line, not as a whole. */
  readonly sink: BodySink | null
  /** Response headers came: `true` when the call takes this response as it streams (a winning answer). */
  onAttemptHeaders(attempt: Attempt): boolean
  /** The attempt is over without being handed out: judge it. */
  onAttemptEnd(attempt: Attempt): void
  /** The body of the response handed out is over (read, failed or cut). */
  onBodyEnd(attempt: Attempt): void
}

/**
 * One attempt of a call on undici's handler API. It is cancelled through
 * its controller (or, before undici handed one over, by leaving: the
 * controller that comes later is aborted at once), and it reports its end to
 * its call exactly once.
 */
export class Attempt implements Sendable, TimedEntry, BodyBuffer {
  readonly owner: AttemptOwner
  readonly host: AttemptHost
  readonly upstream: Upstream
  readonly options: Dispatcher.DispatchOptions
  /** 1-based among all attempts of the call, hedges included. */
  readonly number: number
  readonly permit: PermitValue
  readonly isHedge: boolean
  /** When it was routed (queued or sent), in the client clock's ms. */
  readonly startedAt: number
  phase: PhaseValue = Phase.Queued
  cut: CutValue = Cut.None
  /** What ended it: undici's error or the reason it was cut; `undefined` for a complete response. */
  error: unknown = undefined
  statusCode = 0
  headers: IncomingHttpHeaders | null = null
  /** When its response headers came, in the client clock's ms; 0 unless something needed that time (call.ts). */
  headersAt = 0
  size = 0

  // Queue and timer entries.
  queuePrev: Sendable | null = null
  queueNext: Sendable | null = null
  connection: Connection | null = null
  timerAt = 0
  timerIndex = -1
  timeoutKind: TimeoutKind = 'attempt'
  timeoutMs = 0

  // Live attempts of the client, for close.
  livePrev: Attempt | null = null
  liveNext: Attempt | null = null
  /** Set when a stream commits to this attempt: its chunks go there. */
  sink: BodySink | null = null

  // Internal, of this file and attempt-body.ts: undici's controller and the body buffer.
  controller: DispatchController | null = null
  first: Buffer | null = null
  rest: Buffer[] | null = null
  reader: BodyBuffer['reader'] = null
  stream: BodyBuffer['stream'] = null
  read = false
  paused = false

  #dispatched = false

  constructor (owner: AttemptOwner, host: AttemptHost, upstream: Upstream, options: Dispatcher.DispatchOptions, number: number, permit: PermitValue, isHedge: boolean, now: number) {
    this.owner = owner
    this.host = host
    this.upstream = upstream
    this.options = options
    this.number = number
    this.permit = permit
    this.isHedge = isHedge
    this.startedAt = now
  }

  // --- sending ---

  dispatch (deferred: boolean): void {
    this.phase = Phase.Sent
    this.#dispatched = true
    // A first try, a retry and a hedge are sent from their call's context; a queued
    // attempt goes out when another call frees a connection, and re-enters its own.
    if (deferred) this.owner.scope.runInAsyncScope(this.send, this)
    else this.send()
  }

  /** @internal Hands the attempt to undici. */
  send (): void {
    dispatching.attempt = this.number
    try {
      // Our own connections are never given more than they have room for, so dispatch()'s answer is not needed.
      (this.connection as Connection).dispatcher.dispatch(this.options, this as unknown as Dispatcher.DispatchHandler)
    } catch (error) {
      this.onResponseError(null, error as Error)
    } finally {
      dispatching.attempt = 0
    }
  }

  // --- undici's handler API ---

  onRequestStart (controller: DispatchController): void {
    if (this.phase === Phase.Done) {
      // Cut before undici got to it: it must not be sent now.
      controller.abort(asError(this.error))
      return
    }
    this.controller = controller
  }

  onResponseStart (controller: DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (this.phase === Phase.Done) return
    this.controller = controller
    this.statusCode = statusCode
    this.headers = headers
    // Socket callbacks run in no call's context: what the call decides now (and logs, and publishes) runs in its own.
    this.owner.scope.runInAsyncScope(this.#headers, this)
  }

  #headers (): void {
    const headers = this.headers as IncomingHttpHeaders
    const limit = this.host.maxResponseBytes
    if (limit !== undefined && this.owner.method !== 'HEAD' && this.owner.sink === null && Number(headers['content-length']) > limit) {
      this.cancel(Cut.TooLarge, new ResponseTooLargeError(this.owner, limit))
      return
    }
    this.phase = this.owner.onAttemptHeaders(this) ? Phase.Streaming : Phase.Buffering
  }

  onResponseData (controller: DispatchController, chunk: Buffer): void {
    if (this.phase === Phase.Done) return
    if (this.sink !== null) {
      this.sink.onData(chunk)
      return
    }
    this.size += chunk.length
    const limit = this.host.maxResponseBytes
    if (limit !== undefined && this.size > limit) {
      this.cancel(Cut.TooLarge, new ResponseTooLargeError(this.owner, limit))
      return
    }
    bufferChunk(this, controller, chunk)
  }

  onResponseEnd (): void {
    if (this.phase === Phase.Done) return
    // A body read whole (json(), text()) settles a promise, which its awaiter resumes in its own
    // context; an answer judged now, or a stream that ends, runs in the call's.
    if (this.phase === Phase.Streaming && this.stream === null) this.#end()
    else this.owner.scope.runInAsyncScope(this.#end, this)
  }

  #end (): void {
    const streaming = this.phase === Phase.Streaming
    handlerFrames.depth++
    try {
      this.#finish()
      this.sink?.onEnd()
      endBody(this)
      if (streaming) this.owner.onBodyEnd(this)
      else this.owner.onAttemptEnd(this)
    } finally {
      handlerFrames.depth--
    }
  }

  onResponseError (_controller: DispatchController | null, error: Error): void {
    if (this.phase === Phase.Done) return
    this.owner.scope.runInAsyncScope(this.#endWith, this, error)
  }

  #endWith (error: Error): void {
    const streaming = this.phase === Phase.Streaming
    if (this.cut === Cut.None) this.error = error
    handlerFrames.depth++
    try {
      this.#finish()
      if (streaming) {
        const error = bodyError(this)
        this.sink?.onError(error)
        failBody(this, error)
        this.owner.onBodyEnd(this)
      } else {
        this.owner.onAttemptEnd(this)
      }
    } finally {
      handlerFrames.depth--
    }
  }

  // --- deadline ---

  onTimer (): void {
    // The client's one timer runs in no call's context: the timeout, and what the call does about it, run in this one's.
    this.owner.scope.runInAsyncScope(this.#timeout, this)
  }

  #timeout (): void {
    const owner = this.owner
    this.cancel(Cut.Timeout, new TimeoutError({ clientName: owner.clientName, method: owner.method, path: owner.path, attempts: this.number }, this.timeoutKind, this.timeoutMs))
  }

  /**
   * Ends the attempt now, for `cut`'s reason: unlinked if still queued,
   * aborted through its controller if undici has it, or left to be aborted
   * when undici hands the controller over.
   */
  cancel (cut: CutValue, reason: unknown): void {
    if (this.phase === Phase.Done) return
    this.cut = cut
    this.error = reason
    if (this.phase === Phase.Queued) {
      this.upstream.unqueue(this)
      this.#dispatched = false
    } else if (this.controller !== null) {
      // undici reports the abort through onResponseError, in undici 7 at once.
      if (cut === Cut.Loser || cut === Cut.Abandoned) abortUnseen(this.controller, asError(reason))
      else this.controller.abort(asError(reason))
      if ((this.phase as PhaseValue) === Phase.Done) return
    }
    this.onResponseError(null, reason as Error)
  }

  #finish (): void {
    this.phase = Phase.Done
    if (this.timerIndex >= 0) this.host.timers.remove(this)
    if (this.#dispatched) {
      this.#dispatched = false
      this.upstream.release(this)
    }
  }

  // --- the body (attempt-body.ts reads and hands it out) ---

  /** The whole response has arrived. */
  get complete (): boolean {
    return this.phase === Phase.Done && this.error === undefined
  }
}

/** undici aborts with an Error; a caller's signal may carry any reason. */
function asError (reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason))
}

/**
 * Aborts a losing attempt with the errors undici makes for it (the one its
 * socket is destroyed with, whose stack Node reads at once) left without a
 * stack: the call has its answer, and nobody sees them.
 */
function abortUnseen (controller: DispatchController, reason: Error): void {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    controller.abort(reason)
  } finally {
    Error.stackTraceLimit = limit
  }
}
