import { buildConnector, Client, type Dispatcher, type Pool } from 'undici'
import { rootScope } from '../async-context'
import { Connection, Connections, handlerFrames, type PoolStats } from './connections'
import { ClientClosedError, InvalidOptionsError } from '../errors'
import type { ResolvedClientOptions } from '../options/resolve'

export type { PoolStats } from './connections'

const NO_CONNECTIONS: PoolStats = Object.freeze({ connected: 0, free: 0, pending: 0, queued: 0, running: 0, size: 0 })

/** What an upstream needs of an attempt it sends: the attempt is its own queue entry. */
export interface Sendable {
  queuePrev: Sendable | null
  queueNext: Sendable | null
  /** The connection (or the given dispatcher) it is sent on, set just before `dispatch()`. */
  connection: Connection | null
  /** Hands the attempt to undici; `deferred` when it waited in the queue (its caller's context must be re-entered). */
  dispatch(deferred: boolean): void
}

/**
 * One origin and what reaches it: the client's own connections, or a
 * dispatcher given in the options (never closed by us).
 *
 * Attempts to own connections wait in an admission queue of ours and are
 * handed to undici only when a connection has room for them. An attempt that
 * times out or is aborted while it waits is simply unlinked: nothing was
 * sent, and no healthy socket pays for it (an attempt aborted inside undici's
 * own queue costs the connection it is later given, nodejs/undici#386, and
 * under overload those reconnects collapse the pool).
 */
export class Upstream {
  readonly origin: string
  /** The dispatcher given in the options; null when the client has its own connections. */
  readonly given: Dispatcher | null
  /** Attempts routed here and not over yet, queued or sent: the power-of-two-choices load. */
  inFlight = 0
  // Outlier detection, kept by the replica set.
  consecutiveFailures = 0
  ejectedUntil = 0
  ejected = false
  ejections = 0
  failures = 0

  readonly #connections: Connections | null
  /** The given dispatcher as a connection that is never counted. */
  readonly #direct: Connection | null
  #head: Sendable | null = null
  #tail: Sendable | null = null
  #queued = 0
  #queuedScheduled = false

  constructor (origin: string, route: Connections | Dispatcher) {
    this.origin = origin
    if (route instanceof Connections) {
      this.given = null
      this.#connections = route
      this.#direct = null
    } else {
      this.given = route
      this.#connections = null
      this.#direct = new Connection(route)
    }
  }

  /** Sends the attempt now if a connection has room for it, else queues it. */
  send (attempt: Sendable): void {
    this.inFlight++
    const connections = this.#connections
    if (connections === null) {
      attempt.connection = this.#direct
      attempt.dispatch(false)
      return
    }
    if (this.#head === null && handlerFrames.depth === 0) {
      const connection = connections.take()
      if (connection !== null) {
        attempt.connection = connection
        attempt.dispatch(false)
        return
      }
    }
    attempt.queueNext = null
    attempt.queuePrev = this.#tail
    if (this.#tail === null) this.#head = attempt
    else this.#tail.queueNext = attempt
    this.#tail = attempt
    this.#queued++
    // Sent from inside one of undici's callbacks: the connection it would take may be the one undici is finishing.
    if (handlerFrames.depth > 0) this.#scheduleQueued()
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
    this.#queued--
    this.inFlight--
  }

  /** A sent attempt is over: its connection has room again, for the next attempt waiting. */
  release (attempt: Sendable): void {
    this.inFlight--
    const connections = this.#connections
    if (connections === null) return
    connections.giveBack(attempt.connection as Connection)
    if (this.#head !== null) this.#scheduleQueued()
  }

  /** The attempts waiting go out on the next microtask: after undici's callback has returned. */
  #scheduleQueued (): void {
    if (this.#queuedScheduled) return
    this.#queuedScheduled = true
    // Scheduled from whichever call ended: the queue moves on in no request's context, and each attempt re-enters its own caller's.
    rootScope.runInAsyncScope(queueMicrotask, null, this.#sendQueued)
  }

  /** Attempts waiting go out, in order, while a connection has room. */
  readonly #sendQueued = (): void => {
    this.#queuedScheduled = false
    const connections = this.#connections as Connections
    // Re-read on every turn: a dispatch that fails at once releases its connection again.
    while (this.#head !== null) {
      const connection = connections.take()
      if (connection === null) return
      const attempt = this.#head
      this.#head = attempt.queueNext
      if (this.#head === null) this.#tail = null
      else this.#head.queuePrev = null
      attempt.queueNext = null
      this.#queued--
      attempt.connection = connection
      attempt.dispatch(true)
    }
  }

  stats (): PoolStats | undefined {
    if (this.#connections !== null) return this.#connections.stats(this.#queued)
    const own = (this.given as { stats?: unknown }).stats as Record<string, PoolStats> | PoolStats | undefined
    if (own === undefined || own === null) return undefined
    // A Pool keeps its counters itself; an Agent keeps them per origin, and drops an origin it has no connection to.
    const stats = typeof own.connected === 'number' ? own as PoolStats : (own as Record<string, PoolStats>)[this.origin] ?? NO_CONNECTIONS
    return { connected: stats.connected, free: stats.free, pending: stats.pending, queued: stats.queued, running: stats.running, size: stats.size }
  }

  /** Waits for what runs to finish, then closes own connections; a given dispatcher is left open. */
  async close (): Promise<void> {
    if (this.#connections !== null) await this.#connections.close()
  }

  async destroy (clientName: string): Promise<void> {
    if (this.#connections !== null) await this.#connections.destroy(new ClientClosedError({ clientName }))
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

/** The upstreams of a client: one per replica, each with its own connections unless a dispatcher was given. */
export function createUpstreams (options: ResolvedClientOptions, optionPath: string): Upstream[] {
  const given = options.dispatcher as Dispatcher | undefined
  return options.origins.map((origin) => {
    if (given !== undefined) return new Upstream(origin, given)
    let connections: Connections
    try {
      checkPoolOptions(options.pool)
      // Every attempt is bounded by the client's own timer heap; undici's per-request
      // header and body timers would only repeat it, at a timer per request. Set in `pool`, they apply.
      const poolOptions: Pool.Options = { headersTimeout: 0, bodyTimeout: 0, ...options.pool, connect: rootConnector(options.pool) }
      connections = new Connections(origin, poolOptions)
      // Connections are made lazily: one made now (no socket) has undici check the
      // options only its Client reads, so they fail here rather than on every call.
      if (options.pool.factory === undefined) new Client(origin, poolOptions).destroy(() => {})
    } catch (error) {
      throw new InvalidOptionsError(optionPath === '' ? 'pool' : `${optionPath}.pool`, (error as Error).message, options.name)
    }
    return new Upstream(origin, connections)
  })
}

/** What undici's `Pool` checks itself; the options of its `Client` are checked by making one. */
function checkPoolOptions (pool: Pool.Options): void {
  const { connections, factory, clientTtl, connect } = pool as Record<string, unknown>
  if (connections != null && (typeof connections !== 'number' || !Number.isFinite(connections) || connections < 0)) throw new TypeError('connections must be a number of at least 0 (0 or null: no limit)')
  if (factory !== undefined && typeof factory !== 'function') throw new TypeError('factory must be a function')
  if (clientTtl != null && (typeof clientTtl !== 'number' || !(clientTtl >= 0))) throw new TypeError('clientTtl must be a number of ms')
  if (connect != null && typeof connect !== 'function' && typeof connect !== 'object') throw new TypeError('connect must be a function or an object')
}
