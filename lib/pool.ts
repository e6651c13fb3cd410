import { buildConnector, Client, Pool, type Dispatcher } from 'undici'
import { rootScope } from './async-context'
import { ClientClosedError, InvalidOptionsError } from './errors'
import type { ResolvedClientOptions } from './options'

/** The undici pool's own counters. */
export interface PoolStats {
  connected: number
  free: number
  pending: number
  queued: number
  running: number
  size: number
}

const NO_CONNECTIONS: PoolStats = Object.freeze({ connected: 0, free: 0, pending: 0, queued: 0, running: 0, size: 0 })

/** What an upstream needs of an attempt it sends: the attempt is its own queue entry. */
export interface Sendable {
  queuePrev: Sendable | null
  queueNext: Sendable | null
  /** Hands the attempt to undici; `deferred` when it waited in the queue (its caller's context must be re-entered). */
  dispatch(dispatcher: Dispatcher, deferred: boolean): void
}

/**
 * One origin and the dispatcher that reaches it: the client's own undici
 * `Pool`, or a dispatcher given in the options (never closed by us).
 *
 * Attempts wait in an admission queue of ours and are handed to the pool
 * only while it has a connection free for them (undici says so through
 * `dispatch()`'s return value and its `'drain'` event). An attempt that times out
 * or is aborted while it waits is simply unlinked: nothing was sent, and no
 * healthy socket pays for it (an attempt aborted inside undici's own queue
 * costs the connection it is later given, nodejs/undici#386, and under
 * overload those reconnects collapse the pool).
 */
export class Upstream {
  readonly origin: string
  readonly dispatcher: Dispatcher
  readonly owned: boolean
  /** Attempts routed here and not over yet, queued or sent: the power-of-two-choices load. */
  inFlight = 0
  // Outlier detection, kept by the replica set.
  consecutiveFailures = 0
  ejectedUntil = 0
  ejected = false
  ejections = 0
  failures = 0

  /** The pool said it has no connection free (`dispatch()` returned false) and has not drained since. */
  #busy = false
  #head: Sendable | null = null
  #tail: Sendable | null = null

  constructor (origin: string, dispatcher: Dispatcher, owned: boolean) {
    this.origin = origin
    this.dispatcher = dispatcher
    this.owned = owned
    // undici's own signal that a connection is free again: the queue moves on then.
    if (owned) dispatcher.on('drain', () => { this.#onDrain() })
  }

  /** Sends the attempt now if the pool has a connection free for it, else queues it. */
  send (attempt: Sendable): void {
    this.inFlight++
    if (!this.#busy && this.#head === null) {
      attempt.dispatch(this.dispatcher, false)
      return
    }
    attempt.queueNext = null
    attempt.queuePrev = this.#tail
    if (this.#tail === null) this.#head = attempt
    else this.#tail.queueNext = attempt
    this.#tail = attempt
  }

  /** `dispatch()` returned false: the pool took the attempt but has no connection free for another. */
  markBusy (): void {
    if (this.owned) this.#busy = true
  }

  /** A queued attempt is given up before it was sent. */
  unqueue (attempt: Sendable): void {
    const { queuePrev: prev, queueNext: next } = attempt
    if (prev === null) this.#head = next
    else prev.queueNext = next
    if (next === null) this.#tail = prev
    else next.queuePrev = prev
    attempt.queuePrev = null
    attempt.queueNext = null
    this.inFlight--
  }

  /** A sent attempt is over. */
  release (): void {
    this.inFlight--
  }

  #onDrain (): void {
    this.#busy = false
    while (this.#head !== null && !this.#busy) {
      const attempt = this.#head
      this.#head = attempt.queueNext
      if (this.#head === null) this.#tail = null
      else this.#head.queuePrev = null
      attempt.queueNext = null
      attempt.dispatch(this.dispatcher, true)
    }
  }

  stats (): PoolStats | undefined {
    const own = (this.dispatcher as { stats?: unknown }).stats as Record<string, PoolStats> | PoolStats | undefined
    if (own === undefined || own === null) return undefined
    // A Pool keeps its counters itself; an Agent keeps them per origin, and drops an origin it has no connection to.
    const stats = typeof own.connected === 'number' ? own as PoolStats : (own as Record<string, PoolStats>)[this.origin] ?? NO_CONNECTIONS
    return { connected: stats.connected, free: stats.free, pending: stats.pending, queued: stats.queued, running: stats.running, size: stats.size }
  }

  /** Waits for what runs to finish, then closes an own pool; a given dispatcher is left open. */
  async close (): Promise<void> {
    if (this.owned) await this.dispatcher.close()
  }

  async destroy (clientName: string): Promise<void> {
    if (this.owned) await this.dispatcher.destroy(new ClientClosedError({ clientName }))
  }
}

/**
 * undici's connector, called in the root async scope: a socket's events then
 * run in no request's context, instead of in the context of whichever call
 * happened to open the connection.
 */
function rootConnector (options: Pool.Options): buildConnector.connector {
  const connect = typeof options.connect === 'function'
    ? options.connect
    : buildConnector({
      ...(options.tls as object | undefined),
      maxCachedSessions: options.maxCachedSessions,
      allowH2: options.allowH2,
      socketPath: options.socketPath,
      timeout: options.connectTimeout,
      ...(typeof options.autoSelectFamily === 'boolean' ? { autoSelectFamily: options.autoSelectFamily, autoSelectFamilyAttemptTimeout: options.autoSelectFamilyAttemptTimeout } : undefined),
      ...options.connect
    } as buildConnector.BuildOptions)
  return function connectInRootScope (opts, callback) {
    return rootScope.runInAsyncScope(connect, null, opts, callback)
  }
}

/** The upstreams of a client: one per replica, each with its own pool unless a dispatcher was given. */
export function createUpstreams (options: ResolvedClientOptions, optionPath: string): Upstream[] {
  const given = options.dispatcher as Dispatcher | undefined
  return options.origins.map((origin) => {
    if (given !== undefined) return new Upstream(origin, given, false)
    let pool: Pool
    try {
      const connect = options.pool.connect as unknown
      if (connect != null && typeof connect !== 'function' && typeof connect !== 'object') throw new TypeError('connect must be a function or an object')
      // Every attempt is bounded by the client's own timer heap; undici's per-request
      // header and body timers would only repeat it, at a timer per request. Set in `pool`, they apply.
      const poolOptions: Pool.Options = { headersTimeout: 0, bodyTimeout: 0, ...options.pool, connect: rootConnector(options.pool) }
      pool = new Pool(origin, poolOptions)
      // The pool makes its clients lazily: one made now (no socket) has undici check the
      // options only its Client reads, so they fail here rather than on every call.
      if (options.pool.factory === undefined) new Client(origin, poolOptions).destroy(() => {})
    } catch (error) {
      throw new InvalidOptionsError(optionPath === '' ? 'pool' : `${optionPath}.pool`, (error as Error).message, options.name)
    }
    return new Upstream(origin, pool, true)
  })
}
