import { Verdict, type VerdictValue } from './circuit-breaker'
import type { RandomSource } from '../clock'
import type { ClientEvents } from '../telemetry/events'
import type { ResolvedOutlier } from '../options/resolve'
import type { Upstream } from '../transport/upstream'

/** An ejection never lasts longer than this, however often a replica was ejected. */
const MAX_EJECTION_MS = 300_000

/** Per-replica figures of `stats().replicas`. */
export interface ReplicaStats {
  origin: string
  inFlight: number
  ejected: boolean
  ejections: number
  failures: number
}

/**
 * The replicas of one service. Each attempt goes to the less loaded of two
 * replicas picked at random (power of two choices), among those not ejected
 * and, for a retry or a hedge, not yet tried by its call. A replica with
 * `consecutiveFailures` failed attempts in a row is ejected for
 * `baseEjectionMs` × the times it was ejected; at most `maxEjectedPercent`
 * of the set is out at once, and never all of it.
 */
export class ReplicaSet {
  readonly upstreams: readonly Upstream[]
  readonly #outlier: ResolvedOutlier | false
  readonly #maxEjected: number
  readonly #random: RandomSource
  readonly #events: ClientEvents
  readonly #clientName: string
  #ejectedCount = 0

  constructor (upstreams: readonly Upstream[], outlier: ResolvedOutlier | false, random: RandomSource, events: ClientEvents, clientName: string) {
    this.upstreams = upstreams
    this.#outlier = outlier
    this.#maxEjected = outlier === false ? 0 : Math.min(upstreams.length - 1, Math.floor(upstreams.length * outlier.maxEjectedPercent / 100))
    this.#random = random
    this.#events = events
    this.#clientName = clientName
  }

  /** The replica for the next attempt of a call that has tried `tried` (null for none). */
  choose (tried: readonly Upstream[] | null, now: number): Upstream {
    const upstreams = this.upstreams
    if (upstreams.length === 1) return upstreams[0]
    if (this.#ejectedCount > 0) this.#returnDue(now)
    let first: Upstream | null = null
    let second: Upstream | null = null
    let seen = 0
    // Reservoir-pick two among the eligible: one pass, no allocation.
    for (const upstream of upstreams) {
      if (upstream.ejected || (tried !== null && tried.includes(upstream))) continue
      seen++
      if (seen === 1) first = upstream
      else if (seen === 2) second = upstream
      else {
        const slot = Math.floor(this.#random() * seen)
        if (slot === 0) first = upstream
        else if (slot === 1) second = upstream
      }
    }
    // Every untried replica is out: any replica not ejected will do (never all are).
    if (first === null) return tried === null ? upstreams[0] : this.choose(null, now)
    if (second === null) return first
    if (second.inFlight !== first.inFlight) return second.inFlight < first.inFlight ? second : first
    // The reservoir keeps the pair in index order: a tie (idle replicas) is broken at random, or the later one never wins.
    return this.#random() < 0.5 ? first : second
  }

  /** One attempt's verdict on the replica it went to. */
  record (upstream: Upstream, verdict: VerdictValue, now: number): void {
    if (verdict === Verdict.None) return
    if (verdict === Verdict.Success) {
      upstream.consecutiveFailures = 0
      return
    }
    upstream.failures++
    upstream.consecutiveFailures++
    const outlier = this.#outlier
    if (outlier === false || upstream.ejected || upstream.consecutiveFailures < outlier.consecutiveFailures) return
    if (this.#ejectedCount >= this.#maxEjected) return
    upstream.ejections++
    upstream.ejected = true
    upstream.consecutiveFailures = 0
    const ejectionMs = Math.min(MAX_EJECTION_MS, outlier.baseEjectionMs * upstream.ejections)
    upstream.ejectedUntil = now + ejectionMs
    this.#ejectedCount++
    this.#events.replica({ client: this.#clientName, origin: upstream.origin, ejected: true, ejectionMs, ejections: upstream.ejections })
  }

  stats (now: number): ReplicaStats[] {
    if (this.#ejectedCount > 0) this.#returnDue(now)
    return this.upstreams.map((upstream) => ({
      origin: upstream.origin,
      inFlight: upstream.inFlight,
      ejected: upstream.ejected,
      ejections: upstream.ejections,
      failures: upstream.failures
    }))
  }

  /** Ejected replicas whose time is over serve again; decided from the clock when asked, no timer. */
  #returnDue (now: number): void {
    for (const upstream of this.upstreams) {
      if (!upstream.ejected || now < upstream.ejectedUntil) continue
      upstream.ejected = false
      this.#ejectedCount--
      this.#events.replica({ client: this.#clientName, origin: upstream.origin, ejected: false, ejectionMs: 0, ejections: upstream.ejections })
    }
  }
}
