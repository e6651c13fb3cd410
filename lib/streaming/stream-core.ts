import { callerScope } from '../async-context'
import type { Attempt, BodySink } from '../pipeline/attempt'
import { pauseBody, resumeBody } from '../pipeline/attempt-body'
import { Cut, type CutValue } from '../pipeline/attempt-state'
import type { CallHost } from '../pipeline/call'
import type { Waiter } from '../pipeline/retry-wait'
import type { PreparedRequest } from '../pipeline/prepare'
import type { TimedEntry } from '../pipeline/timer-heap'
import { TimeoutError } from '../errors'

/** A body nobody reads fast enough is paused once this many bytes wait. */
export const HIGH_WATER = 64 * 1024

/** What `client.stream()` adds to a call's options, resolved. */
export interface StreamSettings {
  /** ms without a byte once open. */
  readonly idleTimeout: number
  /** ms from the commit; `undefined` for no bound. */
  readonly maxDuration: number | undefined
  /** `false`, or how many failed reconnects in a row end an event stream. */
  readonly maxReconnects: number | false
  /** A line or event longer than this fails the iteration. */
  readonly maxItemBytes: number
}

/** Whoever reads the stream: told when bytes, the end or a failure arrive. */
export interface StreamReader {
  wake(): void
}

/** Marks, in the queue of chunks, where one connection's body ends and the next one's begins. */
export const BOUNDARY = Buffer.alloc(0)

/** What the stream does when its connection fails after a commit (lib/streaming/resume.ts). */
export interface Reconnector {
  /** `true` when it takes over: the stream goes on after a reconnect. */
  onFailure(error: unknown, attempt: Attempt): boolean
  /** The reader took the `BOUNDARY`: it has read all that came before the failure. */
  caughtUp(): void
  /** The stream ends: cut a wait in progress. */
  stop(): void
}

/**
 * What a stream is between `client.stream()` and its end, behind the public
 * `HttpStream`: the sink its committed attempt's chunks go to, a queue of
 * them that pauses the upstream past `HIGH_WATER`, its idle and
 * `maxDuration` timer, and how it ended.
 *
 * The idle timer is one entry of the client's timer heap. A chunk only
 * records the time it came; when the entry falls due it checks that time and
 * goes back in the heap for the rest of the idle time if bytes came since.
 */
export class StreamCore implements BodySink, TimedEntry, Waiter {
  readonly host: CallHost
  readonly request: PreparedRequest
  readonly settings: StreamSettings
  readonly clientName: string
  readonly method: string
  readonly path: string
  /** The caller's async context: the body's events and reconnects run in it. */
  readonly scope = callerScope()
  /** Attempts sent to open it, reconnects included. */
  attempts = 0
  /** Lines or events yielded (bytes, for `body`). */
  delivered = 0
  /** The body is over and every chunk was queued. */
  ended = false
  /** Why the stream failed, once it did. */
  failure: unknown = undefined
  /** `failure` is the caller's own abort reason: left as given. */
  failureIsCallers = false
  /** The consumer closed it. */
  closed = false
  reader: StreamReader | null = null
  reconnector: Reconnector | null = null

  // The idle and maxDuration timer's heap entry.
  timerAt = 0
  timerIndex = -1

  #attempt: Attempt | null = null
  readonly #chunks: Buffer[] = []
  #held = 0
  #paused = false
  #inData = false
  #lastChunkAt = 0
  #endsAt = Infinity
  #counted = false
  #over = false

  constructor (host: CallHost, request: PreparedRequest, settings: StreamSettings) {
    this.host = host
    this.request = request
    this.settings = settings
    this.clientName = host.name
    this.method = request.method
    this.path = request.path
  }

  // --- the attempt's side ---

  commit (attempt: Attempt): void {
    attempt.sink = this
    this.#attempt = attempt
    this.#paused = false
    const host = this.host
    const now = host.clock.now()
    this.#lastChunkAt = now
    if (!this.#counted) {
      this.#counted = true
      host.counters.streams++
      if (this.settings.maxDuration !== undefined) this.#endsAt = now + this.settings.maxDuration
    }
    if (this.timerIndex < 0) host.timers.add(this, Math.min(now + this.settings.idleTimeout, this.#endsAt))
  }

  onData (chunk: Buffer): void {
    this.#lastChunkAt = this.host.clock.now()
    this.#chunks.push(chunk)
    this.#held += chunk.length
    const reader = this.reader
    if (reader !== null) {
      this.#inData = true
      reader.wake()
      this.#inData = false
    }
    if (!this.#paused && this.#held >= HIGH_WATER && this.#attempt !== null) {
      this.#paused = true
      pauseBody(this.#attempt)
    }
  }

  onEnd (): void {
    this.#attempt = null
    this.ended = true
    this.#stopTimer()
    this.reader?.wake()
    this.#end()
  }

  onError (error: unknown): void {
    const attempt = this.#attempt as Attempt
    this.#attempt = null
    this.#stopTimer()
    if (this.closed || this.failure !== undefined) return
    if (this.reconnector !== null && this.reconnector.onFailure(error, attempt)) {
      this.reader?.wake()
      return
    }
    this.fail(error, attempt.cut === Cut.Caller && !(error instanceof TimeoutError))
  }

  /** A reconnect follows: what comes next is another body. */
  queueBoundary (): void {
    this.#chunks.push(BOUNDARY)
  }

  // --- the reader's side ---

  /** The next chunk, or `null` when none waits; lets the upstream go on once the queue is drained. */
  takeChunk (): Buffer | null {
    const chunk = this.#chunks.shift()
    if (chunk === undefined) return null
    this.#held -= chunk.length
    if (this.#paused && this.#held === 0 && !this.#inData && this.#attempt !== null) {
      this.#paused = false
      // Time spent paused is the consumer's, not the upstream's silence.
      this.#lastChunkAt = this.host.clock.now()
      resumeBody(this.#attempt)
    }
    return chunk
  }

  /** The consumer is done with it: ends it at once and frees its connection. */
  close (): void {
    if (this.closed || this.#over) return
    this.closed = true
    this.#chunks.length = 0
    this.#held = 0
    this.#cut(Cut.Caller, closedReason())
    this.reader?.wake()
    this.#end()
  }

  /** The reader found the body broken (a line too long, bad JSON): the stream ends with `error`. */
  abandon (error: unknown): void {
    if (this.#over) return
    this.failure = error
    this.#chunks.length = 0
    this.#held = 0
    // Not the upstream's health: the attempt counts neither way.
    this.#cut(Cut.TooLarge, error)
    this.#end()
  }

  /** Ends the stream with `error` after what was queued is read. */
  fail (error: unknown, callers: boolean): void {
    if (this.#over) return
    this.failure = error
    this.failureIsCallers = callers
    this.reader?.wake()
    this.#end()
  }

  // --- timers and close ---

  /** Due from the client's timer heap: checked in the caller's context, where its events are published. */
  onTimer (): void {
    this.scope.runInAsyncScope(this.#checkTimer, this)
  }

  #checkTimer (): void {
    const attempt = this.#attempt as Attempt
    const host = this.host
    const now = host.clock.now()
    const details = { clientName: this.clientName, method: this.method, path: this.path, attempts: this.attempts }
    if (now >= this.#endsAt) {
      // The caller's own bound on a working stream: not the upstream's failure.
      this.#cut(Cut.Caller, new TimeoutError(details, 'total', this.settings.maxDuration as number))
      return
    }
    const idleAt = (this.#paused ? now : this.#lastChunkAt) + this.settings.idleTimeout
    if (idleAt > now) {
      host.timers.add(this, Math.min(idleAt, this.#endsAt))
      return
    }
    host.events.streamIdleTimeout({ client: this.clientName, method: this.method, path: this.path, idleTimeoutMs: this.settings.idleTimeout }, this.request.inbound?.log ?? host.log)
    attempt.timeoutKind = 'idle'
    this.#cut(Cut.Timeout, new TimeoutError(details, 'idle', this.settings.idleTimeout))
  }

  /** Close (`fastify.close()`) cut a wait between two connections. */
  cancelWait (error: unknown): void {
    this.fail(error, false)
  }

  #cut (cut: CutValue, reason: unknown): void {
    const attempt = this.#attempt
    if (attempt !== null) attempt.cancel(cut, reason)
  }

  #stopTimer (): void {
    if (this.timerIndex >= 0) this.host.timers.remove(this)
  }

  /** Over for good: no reconnect will follow. */
  #end (): void {
    if (this.#over) return
    this.#over = true
    this.#stopTimer()
    this.reconnector?.stop()
    if (this.#counted) this.host.counters.streams--
  }
}

/** The reason a consumer's `close()` aborts the request with: an AbortError, which tracers record as no error. */
export function closedReason (): Error {
  return new DOMException('the stream was closed by its consumer', 'AbortError')
}
