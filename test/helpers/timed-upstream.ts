import type { Test } from 'tap'
import type { HttpClient } from '../../lib/api/http-client'
import { until } from './manual-clock'
import { startUpstream, type Upstream } from './upstream'

/** How the upstream answers one request. */
export interface Step {
  /** ms before the answer; `'hold'` never answers (until the client gives up or the server closes). */
  delayMs?: number | 'hold'
  status?: number
  body?: string
  headers?: Record<string, string>
}

/** What the server saw of one request. */
export interface Seen {
  index: number
  /** The connection closed before the answer was sent: the client cut it. */
  cut: boolean
  answered: boolean
}

export interface TimedUpstream extends Upstream {
  seen: Seen[]
  /** Requests being worked on right now. */
  open(): number
  /** The most requests it was ever working on at once. */
  maxOpen(): number
  /** Requests whose connection the client closed before the answer. */
  cuts(): number
}

/**
 * A real upstream whose answer to each request is chosen by `plan(index, open, url)`
 * (`open`: requests in progress, this one included). It records which requests
 * the client cut (the response closed before it was sent) and the most it was
 * ever asked to work on at once.
 */
export async function timedUpstream (t: Test, plan: (index: number, open: number, url: string) => Step): Promise<TimedUpstream> {
  const seen: Seen[] = []
  let open = 0
  let maxOpen = 0
  const upstream = await startUpstream((_req, res, hit, index) => {
    open++
    if (open > maxOpen) maxOpen = open
    const record: Seen = { index, cut: false, answered: false }
    seen.push(record)
    const step = plan(index, open, hit.url)
    let timer: NodeJS.Timeout | undefined
    res.on('close', () => {
      open--
      clearTimeout(timer)
      if (!res.writableFinished) record.cut = true
    })
    const answer = (): void => {
      if (res.destroyed) return
      record.answered = true
      const body = step.body ?? 'ok'
      res.writeHead(step.status ?? 200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), ...step.headers })
      res.end(body)
    }
    const delay = step.delayMs ?? 0
    if (delay === 'hold') return
    if (delay === 0) answer()
    else timer = setTimeout(answer, delay)
  })
  t.teardown(() => upstream.close())
  return Object.assign(upstream, {
    seen,
    open: () => open,
    maxOpen: () => maxOpen,
    cuts: () => seen.filter((request) => request.cut).length
  })
}

/** Waits (bounded) until the client's pool runs nothing and has nothing pending. */
export async function poolIdle (client: HttpClient): Promise<void> {
  await until(() => {
    const pool = client.stats().pool
    return pool === undefined || (pool.running === 0 && pool.pending === 0)
  }, 'the pool to be idle', 5_000)
}

/** Collects the process's unhandled rejections from now on (for the rest of the test file). */
export function watchUnhandledRejections (): unknown[] {
  const seen: unknown[] = []
  process.on('unhandledRejection', (reason: unknown) => { seen.push(reason) })
  return seen
}
