import { once } from 'node:events'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Test } from 'tap'
import { HttpClientError } from '../../lib/errors'
import type { HttpClient } from '../../lib/api/http-client'

/** What the upstream does with one request. */
export const FAULT_KINDS = [
  /** A 200 with a small JSON body. */
  'ok',
  /** A 200 after `slowMs`. */
  'slow',
  /** TCP reset before any byte of the response. */
  'reset-before-response',
  /** Headers and part of a content-length body, then the connection closes. */
  'reset-mid-body',
  /** The request is read and never answered. */
  'no-headers',
  /** Headers and the first bytes of a content-length body, then nothing. */
  'stall-body',
  /** The server ends its side of the socket (FIN) without a response. */
  'half-close',
  /** `HTTP/1.1 abc`: a status line whose code is not a number. */
  'malformed-status',
  /** Bytes that are not HTTP at all. */
  'garbage',
  /** A 200 with a content-length body of `oversizeBytes`. */
  'oversize',
  /** The same without content-length (chunked). */
  'oversize-chunked',
  /** A 502 with a content-length body of `oversizeBytes` (a proxy's error page, say). */
  'oversize-error',
  '503',
  /** A 503 with `Retry-After: <retryAfter>`. */
  '503-retry-after',
  '429',
  /** A 429 with `Retry-After: <retryAfter>`. */
  '429-retry-after',
  /**
   * A 200 on a keep-alive socket, which the server then closes after
   * `keepAliveCloseMs`; a request that arrives on it first is dropped
   * unanswered: the server closes the socket just as the client reuses it.
   */
  'keepalive-race'
] as const

export type FaultKind = typeof FAULT_KINDS[number]

/** What a plan knows of a request when it picks its kind. */
export interface PlannedRequest {
  method: string
  url: string
  /** The `call` query parameter, which tests set to tell calls apart. */
  marker: string | undefined
  /** How many requests with the same marker came before this one (0 for the first). */
  attempt: number
  /** How many requests the upstream saw before this one. */
  index: number
}

export type FaultPlan = (request: PlannedRequest) => FaultKind

export interface MarkerCount {
  method: string
  /** Requests seen with this marker. */
  seen: number
  /** Of them, answered with a 429 (refused unprocessed). */
  refused: number
  /** The `idempotency-key` headers they carried. */
  keys: string[]
  /** What each of them was answered with, in order. */
  kinds: FaultKind[]
}

export interface FaultUpstreamOptions {
  /** Picks the kind of a request whose path is not `/fault/<kind>`; `ok` when absent. */
  plan?: FaultPlan
  /** @default 1 MiB */
  oversizeBytes?: number
  /** @default '1' */
  retryAfter?: string
  /** @default 1 */
  keepAliveCloseMs?: number
  /** @default 200 */
  slowMs?: number
}

export interface FaultUpstream {
  url: string
  port: number
  server: http.Server
  /** Swapped at will, for phases (a storm, then healing). */
  plan: FaultPlan
  /** Requests seen. */
  readonly requests: number
  /** Requests seen, per kind they were answered with. */
  readonly byKind: Record<FaultKind, number>
  /** Requests dropped because they arrived on a socket doomed by `keepalive-race`. */
  readonly droppedOnReuse: number
  /** Requests per `call` marker. */
  readonly byMarker: Map<string, MarkerCount>
  /** Faults injected: every request not answered `ok` or `slow`. */
  faults(): number
  /** Requests of `marker` that the upstream may have processed (seen and not refused with a 429). */
  processed(marker: string): number
  close(): Promise<void>
}

const JSON_OK = JSON.stringify({ ok: true })
const PARTIAL_BODY = 'x'.repeat(512)

function emptyCounts (): Record<FaultKind, number> {
  const counts = {} as Record<FaultKind, number>
  for (const kind of FAULT_KINDS) counts[kind] = 0
  return counts
}

function markerOf (url: string): string | undefined {
  const query = url.indexOf('?')
  if (query === -1) return undefined
  return new URLSearchParams(url.slice(query + 1)).get('call') ?? undefined
}

function faultInPath (url: string): FaultKind | undefined {
  if (!url.startsWith('/fault/')) return undefined
  const end = url.indexOf('?')
  const kind = url.slice('/fault/'.length, end === -1 ? undefined : end)
  return (FAULT_KINDS as readonly string[]).includes(kind) ? kind as FaultKind : undefined
}

/**
 * A real HTTP/1.1 server on 127.0.0.1 (port 0) that misbehaves on purpose.
 * The path `/fault/<kind>` asks for one kind; any other path gets what
 * `plan` picks. It counts what it saw, per kind and per `call` marker.
 */
export async function startFaultUpstream (options: FaultUpstreamOptions = {}): Promise<FaultUpstream> {
  const oversize = Buffer.alloc(options.oversizeBytes ?? 1024 * 1024, 'o')
  const retryAfter = options.retryAfter ?? '1'
  const keepAliveCloseMs = options.keepAliveCloseMs ?? 1
  const slowMs = options.slowMs ?? 200
  const sockets = new Set<Socket>()
  const doomed = new WeakSet<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  const byKind = emptyCounts()
  const byMarker = new Map<string, MarkerCount>()
  let requests = 0
  let droppedOnReuse = 0

  function later (ms: number, action: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer)
      action()
    }, ms)
    timers.add(timer)
  }

  function answer (kind: FaultKind, req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket
    switch (kind) {
      case 'ok':
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': JSON_OK.length })
        res.end(JSON_OK)
        return
      case 'slow':
        later(slowMs, () => {
          if (socket.destroyed) return
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': JSON_OK.length })
          res.end(JSON_OK)
        })
        return
      case 'reset-before-response':
        socket.resetAndDestroy()
        return
      case 'reset-mid-body':
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': PARTIAL_BODY.length * 4 })
        // A FIN after a pause, not an RST: an RST can make the client's
        // kernel discard the headers unread, turning this into another kind.
        res.write(PARTIAL_BODY, () => later(20, () => socket.destroy()))
        return
      case 'no-headers':
        return
      case 'stall-body':
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': PARTIAL_BODY.length * 4 })
        res.write(PARTIAL_BODY)
        return
      case 'half-close':
        socket.end()
        return
      case 'malformed-status':
        socket.end('HTTP/1.1 abc\r\n\r\n')
        return
      case 'garbage':
        socket.end('\x00\x01 not http at all\r\n\r\n')
        return
      case 'oversize':
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': oversize.length })
        res.end(oversize)
        return
      case 'oversize-chunked':
        res.writeHead(200, { 'content-type': 'application/octet-stream' })
        res.end(oversize)
        return
      case 'oversize-error':
        res.writeHead(502, { 'content-type': 'text/html', 'content-length': oversize.length })
        res.end(oversize)
        return
      case '503':
      case '429':
      case '503-retry-after':
      case '429-retry-after': {
        const status = kind.startsWith('503') ? 503 : 429
        const body = JSON.stringify({ error: status })
        const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': body.length }
        if (kind.endsWith('retry-after')) headers['retry-after'] = retryAfter
        res.writeHead(status, headers)
        res.end(body)
        return
      }
      case 'keepalive-race':
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': JSON_OK.length, connection: 'keep-alive' })
        res.end(JSON_OK, () => {
          doomed.add(socket)
          later(keepAliveCloseMs, () => socket.destroy())
        })
    }
  }

  const upstream: FaultUpstream = {
    url: '',
    port: 0,
    server: http.createServer((req, res) => {
      req.resume()
      if (doomed.has(req.socket)) {
        droppedOnReuse++
        req.socket.destroy()
        return
      }
      const url = req.url ?? '/'
      const method = req.method ?? 'GET'
      const marker = markerOf(url)
      let count: MarkerCount | undefined
      if (marker !== undefined) {
        count = byMarker.get(marker)
        if (count === undefined) {
          count = { method, seen: 0, refused: 0, keys: [], kinds: [] }
          byMarker.set(marker, count)
        }
      }
      const kind = faultInPath(url) ?? upstream.plan({ method, url, marker, attempt: count?.seen ?? 0, index: requests })
      requests++
      byKind[kind]++
      if (count !== undefined) {
        count.seen++
        count.kinds.push(kind)
        if (kind.startsWith('429')) count.refused++
        const key = req.headers['idempotency-key']
        if (typeof key === 'string') count.keys.push(key)
      }
      answer(kind, req, res)
    }),
    plan: options.plan ?? (() => 'ok'),
    get requests () { return requests },
    byKind,
    get droppedOnReuse () { return droppedOnReuse },
    byMarker,
    faults () {
      let faults = droppedOnReuse
      for (const kind of FAULT_KINDS) if (kind !== 'ok' && kind !== 'slow') faults += byKind[kind]
      return faults
    },
    processed (marker) {
      const count = byMarker.get(marker)
      return count === undefined ? 0 : count.seen - count.refused
    },
    async close () {
      for (const timer of timers) clearTimeout(timer)
      timers.clear()
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => upstream.server.close(() => resolve()))
    }
  }

  const server = upstream.server
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  // The client hangs up on purpose (oversize, timeouts): not the server's problem.
  server.on('clientError', (_error, socket) => socket.destroy())
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `http://127.0.0.1:${upstream.port}`
  return upstream
}

export { refusedPort } from './upstream'

/** A seeded PRNG (mulberry32): the same seed gives the same sequence. */
export function seededRandom (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** A number in [0, 1) fixed by `seed` and the two keys, whatever order requests come in. */
export function hashedRandom (seed: number, a: number, b: number): number {
  return seededRandom((seed ^ Math.imul(a + 1, 0x9e3779b1) ^ Math.imul(b + 1, 0x85ebca77)) >>> 0)()
}

/**
 * A plan that fails `rate` of the requests, picking the kind by `weights`.
 * The draw depends only on the seed, the call marker and the attempt, so a
 * failing run can be replayed exactly whatever the interleaving.
 */
export function randomPlan (seed: number, rate: number, weights: Partial<Record<FaultKind, number>>): FaultPlan {
  const kinds = Object.keys(weights) as FaultKind[]
  const total = kinds.reduce((sum, kind) => sum + (weights[kind] as number), 0)
  return ({ marker, attempt, index }) => {
    const key = marker === undefined ? index : Number(marker)
    const draw = hashedRandom(seed, key, attempt)
    if (draw >= rate) return 'ok'
    let pick = (draw / rate) * total
    for (const kind of kinds) {
      pick -= weights[kind] as number
      if (pick < 0) return kind
    }
    return kinds[kinds.length - 1]
  }
}

/** Runs `task(0..count-1)` with at most `inFlight` under way at once. */
export async function runConcurrently (count: number, inFlight: number, task: (id: number) => Promise<void>): Promise<void> {
  let next = 0
  async function worker (): Promise<void> {
    while (next < count) await task(next++)
  }
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker))
}

/** Counts by label, printed in a stable order. */
export class Tally {
  readonly counts = new Map<string, number>()

  add (label: string, n = 1): void {
    this.counts.set(label, (this.counts.get(label) ?? 0) + n)
  }

  get (label: string): number {
    return this.counts.get(label) ?? 0
  }

  total (): number {
    let sum = 0
    for (const n of this.counts.values()) sum += n
    return sum
  }

  toString (): string {
    return [...this.counts].sort((a, b) => b[1] - a[1]).map(([label, n]) => `${label} ${n}`).join(', ') || 'none'
  }
}

/** The faults an upstream injected, per kind, for a summary. */
export function faultSummary (upstream: FaultUpstream): Tally {
  const tally = new Tally()
  for (const kind of FAULT_KINDS) if (kind !== 'ok' && kind !== 'slow' && upstream.byKind[kind] > 0) tally.add(kind, upstream.byKind[kind])
  if (upstream.droppedOnReuse > 0) tally.add('dropped-on-reuse', upstream.droppedOnReuse)
  return tally
}

/** Records unhandled rejections and uncaught exceptions while a test runs. */
export function watchProcess (t: Test): string[] {
  const problems: string[] = []
  const onRejection = (reason: unknown): void => { problems.push(`unhandledRejection: ${String(reason)}`) }
  const onException = (error: unknown): void => { problems.push(`uncaughtException: ${String(error)}`) }
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)
  t.teardown(() => {
    process.off('unhandledRejection', onRejection)
    process.off('uncaughtException', onException)
  })
  return problems
}

/** The class name of one of our errors; `foreign ...` for anything else, which no call may end with. */
export function errorLabel (error: unknown): string {
  if (error instanceof HttpClientError) return error.name
  return `foreign ${(error as Error | undefined)?.name ?? typeof error}`
}

/** Polls until the client has no call under way and its pool nothing running or queued, for at most 5 s. */
export async function settleDown (client: HttpClient): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    const stats = client.stats()
    const pool = stats.pool
    if (stats.inFlight === 0 && pool !== undefined && pool.running === 0 && pool.pending === 0 && pool.queued === 0) return true
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return false
}

/** How many of the retry budget's aligned 10-second windows a run touched: each grants its own floor. */
export function budgetWindows (startedAt: number, endedAt: number): number {
  return Math.floor(endedAt / 10_000) - Math.floor(startedAt / 10_000) + 1
}

/** `startFaultUpstream(options)`, closed when the test ends. */
export async function faultUpstreamFor (t: Test, options: Parameters<typeof startFaultUpstream>[0] = {}): Promise<FaultUpstream> {
  const upstream = await startFaultUpstream(options)
  t.teardown(() => upstream.close())
  return upstream
}
