import type { CircuitState } from '../policies/circuit-breaker'
import type { PoolStats } from '../transport/upstream'
import type { ReplicaStats } from '../policies/replicas'

/** Counters behind `stats()`, kept since the client was made. */
export class Counters {
  requests = 0
  successes = 0
  failures = 0
  retries = 0
  retriesDenied = 0
  shortCircuited = 0
  hedges = 0
  hedgeWins = 0
  overloaded = 0
  /** Streams open now (committed and not ended). */
  streams = 0
  rateLimited = 0
  rateLimitWaits = 0
  redirects = 0
}

/** What `client.stats()` returns. */
export interface ClientStats {
  circuit: CircuitState
  /** Calls under way: waiting for a socket, in flight, or waiting to retry. */
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
  /** Hedges sent. */
  hedges: number
  /** Calls answered by a hedge. */
  hedgeWins: number
  /** Calls refused by `maxInFlight` or the adaptive limit. */
  overloaded: number
  /** Streams open now: committed (`client.stream()` resolved) and not ended. */
  streams: number
  /** Calls refused by the rate limit. */
  rateLimited: number
  /** Calls that waited for their turn under the rate limit. */
  rateLimitWaits: number
  /** Redirects followed. */
  redirects: number
  /** The adaptive concurrency limit; `undefined` when `adaptiveConcurrency` is off. */
  concurrencyLimit: number | undefined
  /** One entry per replica. */
  replicas: ReplicaStats[]
  /** The undici pools' own stats, summed over the replicas; `undefined` for a given dispatcher that keeps none. */
  pool: PoolStats | undefined
}

/** Sums the pools' stats; `undefined` when none keeps any. */
export function sumPoolStats (all: ReadonlyArray<PoolStats | undefined>): PoolStats | undefined {
  let sum: PoolStats | undefined
  for (const stats of all) {
    if (stats === undefined) continue
    if (sum === undefined) {
      sum = { ...stats }
      continue
    }
    sum.connected += stats.connected
    sum.free += stats.free
    sum.pending += stats.pending
    sum.queued += stats.queued
    sum.running += stats.running
    sum.size += stats.size
  }
  return sum
}
