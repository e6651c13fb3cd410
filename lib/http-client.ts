import { randomUUID } from 'node:crypto'
import { Client, Pool, type Dispatcher } from 'undici'
import { Call, type ClientCore, Counters } from './call'
import { CircuitBreaker, type CircuitState } from './circuit-breaker'
import { type Clock, type RandomSource, systemClock } from './clock'
import { DeadlineQueue } from './deadline-queue'
import { ClientClosedError, InvalidOptionsError, InvalidRequestError } from './errors'
import { ClientEvents } from './events'
import { type HeaderList, hasHeader, mergeHeaderLists, toHeaderList } from './headers'
import { type Logger, silentLogger } from './logger'
import { DEFAULT_RETRY, type ResolvedClientOptions, type ResolvedRetry, resolveClientOptions, resolveRetry } from './options'
import { currentOutboundContext } from './request-context'
import type { HttpResponse } from './response'
import { RetryBudget } from './retry-budget'
import type { CallOptions, CreateHttpClientOptions, RequestOptions } from './types'
import { PathRefusal, queryString, sendablePath } from './url'
import { checkDuration, describe, type Fail, hasForbiddenHeaderChars, isHeaderName } from './validate'

/** The undici pool's own counters. */
export interface PoolStats {
  connected: number
  free: number
  pending: number
  queued: number
  running: number
  size: number
}

export interface ClientStats {
  circuit: CircuitState
  /** Calls under way. */
  inFlight: number
  /** Calls made since the client was created. */
  requests: number
  /** Calls that ended with a response that is not a 5xx. */
  successes: number
  /** Calls that ended with a 5xx, a transport error or a timeout. */
  failures: number
  /** Retries sent. */
  retries: number
  /** Retries refused by the retry budget. */
  retriesDenied: number
  /** Calls refused by an open circuit. */
  shortCircuited: number
  /** The pool's stats; `undefined` for a given dispatcher that keeps none. */
  pool: PoolStats | undefined
}

/** Injected for tests: the clock and the random source behind waits, budget and breaker. */
export interface ClientInternals {
  clock?: Clock
  random?: RandomSource
}

const JSON_CONTENT_TYPE = 'application/json'

function isStreamBody (body: unknown): boolean {
  return typeof body === 'object' && body !== null &&
    (typeof (body as { pipe?: unknown }).pipe === 'function' || typeof (body as Record<symbol, unknown>)[Symbol.asyncIterator] === 'function')
}

function isAbortSignal (value: unknown): value is AbortSignal {
  return typeof value === 'object' && value !== null && typeof (value as AbortSignal).addEventListener === 'function' && 'aborted' in value
}

/**
 * A named client for one upstream origin: an undici Pool (or a given
 * dispatcher) behind retries, a circuit breaker and timeouts.
 *
 * Everything that can be decided once per client — URL parsing, default
 * headers, the timeout queue — is decided here, so a call does only what
 * depends on its own arguments.
 */
export class HttpClient implements ClientCore {
  readonly name: string
  /** @internal */ readonly clock: Clock
  /** @internal */ readonly random: RandomSource
  /** @internal */ readonly dispatcher: Dispatcher
  /** @internal */ readonly breaker: CircuitBreaker | null
  /** @internal */ readonly budget: RetryBudget | null
  /** @internal */ readonly events: ClientEvents
  /** @internal */ readonly counters = new Counters()
  /** @internal */ readonly maxResponseBytes: number | undefined
  /** @internal */ readonly waiting = new Set<Call>()
  /** @internal */ readonly active: Set<Call> | null
  /** @internal */ closed = false

  private readonly settings: ResolvedClientOptions
  private readonly ownsDispatcher: boolean
  private readonly queues = new Map<number, DeadlineQueue>()
  private readonly firstQueue: DeadlineQueue
  private closing: Promise<void> | null = null
  private onDrained: (() => void) | null = null

  /** @internal Use `createHttpClient()` or the plugin. */
  constructor (options: ResolvedClientOptions, logger: Logger, internals: ClientInternals = {}, optionPath = '') {
    this.settings = options
    this.name = options.name
    this.clock = internals.clock ?? systemClock
    this.random = internals.random ?? Math.random
    this.maxResponseBytes = options.maxResponseBytes
    const log = logger.child({ client: options.name })
    this.events = new ClientEvents(log)
    this.breaker = options.circuitBreaker === false
      ? null
      : new CircuitBreaker(options.circuitBreaker, (from, to, remainingMs) => {
        this.events.circuit({ client: this.name, from, to, remainingMs })
      })
    const budget = options.retry === false ? false : options.retry.budget
    this.budget = budget === false ? null : new RetryBudget(budget.ratio, budget.minPerSecond)
    this.ownsDispatcher = options.dispatcher === undefined
    this.dispatcher = options.dispatcher ?? createPool(options, optionPath)
    this.active = this.ownsDispatcher ? null : new Set()
    this.firstQueue = this.queueFor(Math.min(options.timeout, options.totalTimeout))
  }

  get (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('GET', path, options)
  }

  post (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('POST', path, options)
  }

  put (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('PUT', path, options)
  }

  patch (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('PATCH', path, options)
  }

  delete (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('DELETE', path, options)
  }

  head (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('HEAD', path, options)
  }

  options (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.send('OPTIONS', path, options)
  }

  /** A call with any method: `request({ method, path, ...options })`. */
  request (options: RequestOptions): Promise<HttpResponse> {
    const method = (options as Partial<RequestOptions> | undefined)?.method
    if (typeof method !== 'string' || !isHeaderName(method)) {
      return Promise.reject(new InvalidRequestError({ clientName: this.name, method: String(method), path: String(options?.path) }, `method must be an HTTP method name, got ${describe(method)}`))
    }
    return this.send(method.toUpperCase(), options.path, options)
  }

  stats (): ClientStats {
    const counters = this.counters
    const pool = (this.dispatcher as { stats?: PoolStats }).stats
    return {
      circuit: this.breaker === null ? 'closed' : this.breaker.state(this.clock.now()),
      inFlight: counters.inFlight,
      requests: counters.requests,
      successes: counters.successes,
      failures: counters.failures,
      retries: counters.retries,
      retriesDenied: counters.retriesDenied,
      shortCircuited: counters.shortCircuited,
      pool: pool === undefined
        ? undefined
        : { connected: pool.connected, free: pool.free, pending: pool.pending, queued: pool.queued, running: pool.running, size: pool.size }
    }
  }

  /**
   * Stops new calls (`ClientClosedError`), cuts waits between retries, lets
   * calls in flight finish, then closes the pool. After a grace period equal
   * to the client's `timeout`, whatever is left is destroyed. A dispatcher
   * given in the options is never closed.
   */
  close (): Promise<void> {
    if (this.closing === null) {
      this.closed = true
      for (const call of [...this.waiting]) call.cancelWait(new ClientClosedError(call))
      this.closing = this.drainAndClose()
    }
    return this.closing
  }

  /** @internal */
  queueFor (durationMs: number): DeadlineQueue {
    let queue = this.queues.get(durationMs)
    if (queue === undefined) {
      queue = new DeadlineQueue(durationMs, this.clock)
      this.queues.set(durationMs, queue)
    }
    return queue
  }

  /** @internal */
  onCallSettled (): void {
    if (this.onDrained !== null && this.counters.inFlight === 0) this.onDrained()
  }

  private send (method: string, path: string, options: CallOptions | undefined): Promise<HttpResponse> {
    if (this.closed) return Promise.reject(new ClientClosedError({ clientName: this.name, method, path }))
    let sendable: string
    try {
      sendable = sendablePath(path)
    } catch (error) {
      if (!(error instanceof PathRefusal)) throw error
      return Promise.reject(new InvalidRequestError({ clientName: this.name, method, path: String(path) }, error.message))
    }
    const now = this.clock.now()
    if (options === undefined) {
      const o = this.settings
      return new Call(this, method, path, o.basePath + sendable, this.withContextHeaders(o.defaultHeaders), undefined, o.origins[0],
        o.retry, o.timeout, o.totalTimeout, this.firstQueue, true, false, undefined, now).start(now)
    }
    let call: Call
    try {
      call = this.buildCall(method, path, sendable, options, now)
    } catch (error) {
      return Promise.reject(error)
    }
    return call.start(now)
  }

  /** The headers of the inbound request being served (request id, propagated headers) under `list`. */
  private withContextHeaders (list: HeaderList): HeaderList {
    const context = currentOutboundContext()
    if (context === undefined) return list
    return mergeHeaderLists(list, this.settings.propagateRequestId ? context.withRequestId : context.propagatedOnly)
  }

  private buildCall (method: string, path: string, sendable: string, options: CallOptions, now: number): Call {
    const o = this.settings
    const fail: Fail = (option, reason) => {
      throw new InvalidRequestError({ clientName: this.name, method, path }, `${option} ${reason}`)
    }
    if (typeof options !== 'object' || options === null) fail('options', `must be an object, got ${describe(options)}`)

    let fullPath = o.basePath + sendable
    if (options.query !== undefined) {
      if (typeof options.query !== 'object' || options.query === null) fail('query', `must be an object, got ${describe(options.query)}`)
      const query = queryString(options.query)
      if (query !== '') fullPath += fullPath.includes('?') ? `&${query.slice(1)}` : query
    }

    let headers = o.defaultHeaders
    if (options.headers !== undefined) headers = mergeHeaderLists(toHeaderList(options.headers, 'headers', fail), headers)

    let body: Dispatcher.DispatchOptions['body']
    let replayable = true
    if (options.json !== undefined) {
      if (options.body !== undefined) fail('json', 'and body cannot be used together')
      let text: string | undefined
      try {
        text = JSON.stringify(options.json)
      } catch (error) {
        fail('json', `cannot be serialized: ${(error as Error).message}`)
      }
      if (text === undefined) fail('json', `cannot be serialized: ${describe(options.json)}`)
      body = text
      if (!hasHeader(headers, 'content-type')) headers = [...headers, 'content-type', JSON_CONTENT_TYPE]
    } else if (options.body !== undefined) {
      const given = options.body
      if (typeof given === 'string' || given instanceof Uint8Array) {
        body = given
      } else if (isStreamBody(given)) {
        body = given as Dispatcher.DispatchOptions['body']
        replayable = false
      } else {
        fail('body', `must be a string, Buffer, Uint8Array or readable stream, got ${describe(given)}`)
      }
    }

    if (options.idempotencyKey !== undefined && !hasHeader(headers, 'idempotency-key')) {
      const key = options.idempotencyKey === true ? randomUUID() : options.idempotencyKey
      if (typeof key !== 'string' || key === '' || hasForbiddenHeaderChars(key)) {
        fail('idempotencyKey', `must be a non-empty string without CR/LF, or true, got ${describe(options.idempotencyKey)}`)
      }
      headers = [...headers, 'idempotency-key', key]
    }
    const hasIdempotencyKey = hasHeader(headers, 'idempotency-key')

    const signal = options.signal
    if (signal !== undefined && !isAbortSignal(signal)) fail('signal', `must be an AbortSignal, got ${describe(signal)}`)
    const timeout = options.timeout === undefined ? o.timeout : checkDuration(options.timeout, 'timeout', fail)
    const totalTimeout = options.totalTimeout === undefined ? o.totalTimeout : checkDuration(options.totalTimeout, 'totalTimeout', fail)
    let retry: ResolvedRetry | false = o.retry
    if (options.retry !== undefined) retry = resolveRetry(options.retry, o.retry === false ? DEFAULT_RETRY : o.retry, 'retry', fail)
    const firstQueue = timeout === o.timeout && totalTimeout === o.totalTimeout ? this.firstQueue : this.queueFor(Math.min(timeout, totalTimeout))

    return new Call(this, method, path, fullPath, this.withContextHeaders(headers), body, o.origins[0],
      retry, timeout, totalTimeout, firstQueue, replayable, hasIdempotencyKey, signal, now)
  }

  private async drainAndClose (): Promise<void> {
    let graceTimer: NodeJS.Timeout | undefined
    const graceOver = new Promise<boolean>((resolve) => {
      graceTimer = setTimeout(resolve, this.settings.timeout, false)
    })
    const finished = this.ownsDispatcher
      ? this.dispatcher.close().then(() => true)
      : new Promise<boolean>((resolve) => {
        this.onDrained = () => resolve(true)
        this.onCallSettled()
      })
    const inTime = await Promise.race([finished, graceOver])
    clearTimeout(graceTimer)
    if (!inTime) {
      if (this.ownsDispatcher) {
        await this.dispatcher.destroy(new ClientClosedError({ clientName: this.name }))
      } else {
        for (const call of [...(this.active as Set<Call>)]) call.destroy()
      }
    }
    for (const queue of this.queues.values()) queue.clear()
  }
}

function createPool (options: ResolvedClientOptions, optionPath: string): Pool {
  const poolOptions: Pool.Options = { ...options.pool }
  if (options.maxResponseBytes !== undefined) poolOptions.maxResponseSize = options.maxResponseBytes
  let pool: Pool
  try {
    // This core sends to the first replica only.
    pool = new Pool(options.origins[0], poolOptions)
    // The pool makes its clients lazily: one made now (no socket) has undici check the
    // options only its Client reads, so they fail here rather than on every call.
    if (poolOptions.factory === undefined) new Client(options.origins[0], poolOptions).destroy(() => {})
  } catch (error) {
    throw new InvalidOptionsError(optionPath === '' ? 'pool' : `${optionPath}.pool`, (error as Error).message, options.name)
  }
  const dispatch = pool.dispatch.bind(pool)
  pool.dispatch = (opts, handler) => {
    const pending = handler as PendingHandler
    if ('reason' in pending && typeof pending.onConnect === 'function') pending.onConnect = refuseIfAbortedWhileQueued
    return dispatch(opts, handler)
  }
  return pool
}

/** undici's request handler, as far as the guard below reads it. */
interface PendingHandler {
  reason?: unknown
  onConnect?: (abort: (error?: Error) => void, context?: unknown) => void
}

// undici closes the connection it hands a request to when that request was
// aborted while it waited in the pool's queue (nodejs/undici#386). Under
// overload every attempt that timed out in the queue then costs a healthy
// connection, and the reconnects slow the pool further until it collapses.
// A handler whose onConnect throws is failed without touching the socket.
function refuseIfAbortedWhileQueued (this: PendingHandler, abort: (error?: Error) => void, context?: unknown): void {
  if (this.reason !== null && this.reason !== undefined) throw this.reason
  return (Object.getPrototypeOf(this) as PendingHandler).onConnect?.call(this, abort, context)
}

/**
 * Makes a client without Fastify, for scripts and tests:
 * `createHttpClient({ name, baseUrl, logger, ...clientOptions })`.
 */
export function createHttpClient (options: CreateHttpClientOptions): HttpClient {
  if (typeof options !== 'object' || options === null) throw new InvalidOptionsError('options', `must be an object, got ${describe(options)}`)
  const { name, logger, ...clientOptions } = options
  if (typeof name !== 'string' || name === '') throw new InvalidOptionsError('name', `must be a non-empty string, got ${describe(name)}`)
  if (logger !== undefined && (typeof logger !== 'object' || logger === null || typeof logger.child !== 'function')) {
    throw new InvalidOptionsError('logger', 'must be a pino-compatible logger (with child())', name)
  }
  return new HttpClient(resolveClientOptions(name, clientOptions, ''), logger ?? silentLogger)
}
