import { Client, type Dispatcher, type Pool } from 'undici'

/** The undici pool's own counters. */
export interface PoolStats {
  connected: number
  free: number
  pending: number
  queued: number
  running: number
  size: number
}

/**
 * One undici `Client` (one connection) of a client's own pool, and how many
 * of our attempts are on it. undici's `Client` keeps its own queue of
 * `pipelining` requests; we never give it more than that.
 */
export class Connection {
  readonly dispatcher: Dispatcher
  /** Attempts dispatched on it and not over yet. */
  running = 0
  /** On the free stack (it has room for another attempt). */
  free = false
  /** Never given another attempt: its connect failed, or it outlived `clientTtl`. */
  retired = false
  /** When its socket connected (`performance.now()`: a clock step does not age it), for `clientTtl`; 0 until then or without one. */
  connectedAt = 0

  constructor (dispatcher: Dispatcher) {
    this.dispatcher = dispatcher
  }
}

type Factory = (origin: URL, options: object) => Dispatcher

/**
 * How many of our handler's end callbacks are running. A connection given
 * back there is free at once, but it must not be dispatched on before
 * undici's own callback has returned: undici is between two steps of its
 * bookkeeping then (a dispatch from inside its connect-error loop trips its
 * assertions). Attempts sent meanwhile wait for the next microtask.
 */
export const handlerFrames = { depth: 0 }

/**
 * A client's own pool to one origin: up to `connections` undici `Client`s,
 * made as they are needed, each taking up to `pipelining` attempts at once.
 *
 * Connections with room wait on a stack, so taking one and giving it back
 * are O(1) (undici's `Pool` scans its clients for a free one, twice a
 * request). The most recently used connection, whose socket is warm, is
 * taken first, and it is taken again as soon as its response is over (a
 * `Client` writes a request dispatched then at once; `Pool` waits for the
 * client's `'drain'`, a turn of the event loop later, and meanwhile opens
 * other sockets). As `Pool` does, a connection whose connect failed is not
 * given attempts again (nodejs/undici#3895), and one older than `clientTtl`
 * is closed when it would next be taken.
 */
export class Connections {
  readonly #origin: URL
  readonly #options: Pool.Options
  readonly #factory: Factory
  readonly #limit: number
  readonly #pipelining: number
  readonly #clientTtl: number
  /** Every connection not yet dropped, retired ones with attempts on them included: for stats and close. */
  readonly #all: Connection[] = []
  readonly #free: Connection[] = []
  /** Connections not retired: what counts towards `connections`. */
  #open = 0

  constructor (origin: string, options: Pool.Options) {
    const { connections, factory, clientTtl, ...clientOptions } = options
    this.#origin = new URL(origin)
    // What undici's Pool hands its factory: the Client options, and clientTtl.
    this.#options = { ...clientOptions, clientTtl } as Pool.Options
    this.#factory = (factory as Factory | undefined) ?? makeClient
    // As in undici's Pool: 0 or null is no limit.
    this.#limit = connections == null || connections === 0 ? Infinity : connections
    this.#pipelining = Math.max(1, clientOptions.pipelining ?? 1)
    this.#clientTtl = clientTtl != null && clientTtl > 0 ? clientTtl : 0
  }

  /** A connection with room for one more attempt, counted as taken; null when all are busy. */
  take (): Connection | null {
    const free = this.#free
    while (free.length > 0) {
      const connection = free[free.length - 1]
      if (this.#clientTtl > 0 && connection.connectedAt > 0 && performance.now() - connection.connectedAt > this.#clientTtl) {
        this.#retire(connection)
        if (connection.running === 0) this.#drop(connection)
        connection.dispatcher.close().then(ignore, ignore)
        continue
      }
      if (++connection.running >= this.#pipelining) {
        free.pop()
        connection.free = false
      }
      return connection
    }
    if (this.#open >= this.#limit) return null
    const connection = this.#make()
    connection.running = 1
    if (this.#pipelining > 1) {
      connection.free = true
      free.push(connection)
    }
    return connection
  }

  /** An attempt on `connection` is over. */
  giveBack (connection: Connection): void {
    connection.running--
    if (connection.retired) {
      if (connection.running === 0) this.#drop(connection)
    } else if (!connection.free) {
      connection.free = true
      this.#free.push(connection)
    }
  }

  /** undici's counters summed over the connections, with `queued` attempts waiting for one (as `Pool` counts its own queue). */
  stats (queued: number): PoolStats {
    let connected = 0
    let free = 0
    let pending = queued
    let running = 0
    let size = queued
    for (const connection of this.#all) {
      const stats = (connection.dispatcher as { stats?: { connected: boolean, pending: number, running: number, size: number } }).stats
      if (stats === undefined) continue
      if (stats.connected) {
        connected++
        if (!connection.retired && connection.running < this.#pipelining) free++
      }
      pending += stats.pending
      running += stats.running
      size += stats.size
    }
    return { connected, free, pending, queued, running, size }
  }

  async close (): Promise<void> {
    await Promise.all(this.#all.map((connection) => connection.dispatcher.close()))
  }

  async destroy (error: Error): Promise<void> {
    await Promise.all(this.#all.map((connection) => connection.dispatcher.destroy(error)))
  }

  #make (): Connection {
    const connection = new Connection(this.#factory(this.#origin, this.#options))
    this.#all.push(connection)
    this.#open++
    const dispatcher = connection.dispatcher
    dispatcher.on('connectionError', () => {
      this.#retire(connection)
      if (connection.running === 0) this.#drop(connection)
    })
    if (this.#clientTtl > 0) dispatcher.on('connect', () => { connection.connectedAt = performance.now() })
    return connection
  }

  #retire (connection: Connection): void {
    if (connection.retired) return
    connection.retired = true
    this.#open--
    if (connection.free) {
      connection.free = false
      this.#free.splice(this.#free.indexOf(connection), 1)
    }
  }

  /** A retired connection with nothing on it leaves the pool. */
  #drop (connection: Connection): void {
    const index = this.#all.indexOf(connection)
    if (index !== -1) this.#all.splice(index, 1)
  }
}

function makeClient (origin: URL, options: object): Dispatcher {
  return new Client(origin, options)
}

function ignore (): void {}
