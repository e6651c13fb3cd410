import type { Attempt } from '../pipeline/attempt'
import { Cut } from '../pipeline/attempt-state'
import { backoffDelay } from '../pipeline/backoff'
import { Call } from '../pipeline/call'
import type { PreparedRequest } from '../pipeline/prepare'
import type { HttpResponse } from '../pipeline/response'
import { RateLimitedError, TimeoutError, UpstreamError } from '../errors'
import { withoutHeader } from '../headers'
import { DEFAULT_RETRY, type ResolvedRetry } from '../options/resolve'
import type { SseParser } from './sse-parser'
import { closedReason, type Reconnector, type StreamCore } from './stream-core'

/**
 * Resume of an event stream (`events()` with `resume`): after a transport
 * failure or an idle timeout, once the consumer has read every event that
 * had arrived (so the last event id is the last one it saw), the stream waits
 * the client's retry backoff, never less than the server's last `retry:`,
 * then opens again with the same request plus `Last-Event-ID`. Each
 * reconnect is a retry: it needs the budget and a closed circuit, and counts
 * in `stats().retries`. A 204 ends the stream cleanly (the commit of an empty
 * body); any other non-2xx, or `maxReconnects` failed reconnects in a row,
 * end it with that failure.
 */
export class Reconnection implements Reconnector {
  readonly #core: StreamCore
  readonly #parser: SseParser
  readonly #max: number
  readonly #retry: ResolvedRetry
  /** Reconnects made since the stream last yielded an event. */
  #failures = 0
  #deliveredAt = 0
  #lastError: unknown = undefined
  #timer: unknown = null
  #waitMs = 0
  /** When the budget granted the reconnect under way: given back if it never goes out. */
  #grantedAt = 0
  #controller: AbortController | null = null
  #signalListener: (() => void) | null = null
  #stopped = false
  /** The stream's place in the concurrency limit, kept between two connections. */
  #holding = false
  readonly #afterWait = (): void => { this.#reconnect() }

  constructor (core: StreamCore, parser: SseParser, maxReconnects: number) {
    this.#core = core
    this.#parser = parser
    this.#max = maxReconnects
    this.#retry = core.request.retry === false ? DEFAULT_RETRY : core.request.retry
  }

  onFailure (error: unknown, attempt: Attempt): boolean {
    const core = this.#core
    const host = core.host
    if (this.#stopped || host.draining || host.closed || !core.request.replayable) return false
    if (attempt.cut !== Cut.None && attempt.cut !== Cut.Timeout) return false
    if (core.delivered > this.#deliveredAt) this.#failures = 0
    if (this.#failures >= this.#max) return false
    this.#lastError = error
    // The events still queued are read first: the reconnect asks for what follows the last of them.
    core.queueBoundary()
    this.#wait()
    return true
  }

  /** The consumer has read every event of the connection that failed: the wait starts. */
  caughtUp (): void {
    if (this.#stopped) return
    if (this.#parser.lastEventId === undefined) {
      this.#end(this.#lastError)
      return
    }
    this.#schedule()
  }

  /** Called once, when the stream ends for good. */
  stop (): void {
    this.#stopped = true
    this.#clearWait()
    this.#controller?.abort(closedReason())
    this.#controller = null
  }

  #schedule (): void {
    const core = this.#core
    const host = core.host
    this.#waitMs = Math.max(backoffDelay(this.#failures + 1, this.#retry, host.random), this.#parser.lastRetry ?? 0)
    core.scope.runInAsyncScope(() => {
      this.#timer = host.clock.setTimer(this.#afterWait, this.#waitMs)
    })
    // A stream waiting to reconnect holds the process open, as a call waiting to retry does.
    ;(this.#timer as { ref?: () => unknown }).ref?.()
  }

  #reconnect (): void {
    this.#timer = null
    const core = this.#core
    const host = core.host
    const now = host.clock.now()
    const log = core.request.inbound?.log ?? host.log
    // Close cuts this wait (it is in `host.waiting`), so the client is open here.
    if (host.breaker !== null && host.breaker.state(now) !== 'closed') {
      this.#end(this.#lastError)
      return
    }
    if (host.budget !== null && !host.budget.tryAcquire(now)) {
      host.counters.retriesDenied++
      this.#end(this.#lastError)
      return
    }
    this.#grantedAt = now
    this.#clearWait()
    host.counters.retries++
    this.#failures++
    this.#deliveredAt = core.delivered
    const lastEventId = this.#parser.lastEventId as string
    host.events.streamResumed({ client: core.clientName, method: core.method, path: core.path, attempt: this.#failures, lastEventId, waitMs: this.#waitMs }, log)
    const controller = new AbortController()
    this.#controller = controller
    const call = new Call(host, this.#request(lastEventId, controller.signal), now)
    call.sink = core
    call.resumes = true
    call.start().then((response) => { this.#opened(response, call) }, (error: unknown) => { this.#refused(error, call) })
  }

  #opened (response: HttpResponse, call: Call): void {
    const core = this.#core
    core.attempts += call.attempts
    if (this.#stopped) return
    this.#controller = null
    if (response.ok) return
    try {
      response.raiseForStatus()
    } catch (error) {
      this.#end(error)
    }
  }

  #refused (error: unknown, call: Call): void {
    const core = this.#core
    core.attempts += call.attempts
    // Refused before it went out (no rate-limit token in time, a full queue): a retry not made
    // gives its budget back, and the stream ends with the failure it was to recover from.
    if (call.attempts === 0) core.host.budget?.refund(this.#grantedAt, core.host.clock.now())
    if (this.#stopped) return
    this.#controller = null
    const signal = core.request.signal
    if (signal?.aborted === true) {
      core.fail(signal.reason, true)
      return
    }
    if (call.attempts === 0 && error instanceof RateLimitedError) {
      this.#end(this.#lastError)
      return
    }
    const transient = error instanceof UpstreamError || error instanceof TimeoutError
    if (!transient || this.#failures >= this.#max || core.host.draining || core.host.closed) {
      this.#end(error)
      return
    }
    this.#lastError = error
    this.#wait()
    this.#schedule()
  }

  /** Between two connections the stream is still open: it keeps its place in the limit, and close or the caller can cut the wait. */
  #wait (): void {
    const host = this.#core.host
    host.waiting.add(this.#core)
    if (!this.#holding) {
      this.#holding = true
      host.limit.inFlight++
    }
    this.#watchSignal()
  }

  /** The same request, once, with `Last-Event-ID`; no deadline (it applied to the opening only) and no hedge. */
  #request (lastEventId: string, signal: AbortSignal): PreparedRequest {
    const request = this.#core.request
    const caller = request.signal
    const headers = withoutHeader(request.options.headers, 'last-event-id')
    headers.push('last-event-id', lastEventId)
    return {
      ...request,
      options: { ...request.options, headers },
      retry: request.retry === false ? false : { ...request.retry, maxAttempts: 1 },
      hedge: false,
      signal: caller === undefined ? signal : AbortSignal.any([caller, signal]),
      deadlineAt: undefined,
      deadlineHeader: undefined
    }
  }

  #end (error: unknown): void {
    this.#core.fail(error, false)
  }

  #watchSignal (): void {
    const signal = this.#core.request.signal
    if (signal === undefined || this.#signalListener !== null) return
    this.#signalListener = () => { this.#core.fail(signal.reason, true) }
    signal.addEventListener('abort', this.#signalListener)
  }

  #clearWait (): void {
    const core = this.#core
    core.host.waiting.delete(core)
    if (this.#holding) {
      this.#holding = false
      core.host.limit.release()
    }
    if (this.#timer !== null) {
      core.host.clock.clearTimer(this.#timer)
      this.#timer = null
    }
    if (this.#signalListener !== null) {
      core.request.signal?.removeEventListener('abort', this.#signalListener)
      this.#signalListener = null
    }
  }
}
