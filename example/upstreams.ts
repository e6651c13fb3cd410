// The services the gateway calls, as real HTTP servers on 127.0.0.1: three
// replicas of catalog, and a payments service that can be scripted, made
// flaky or slow, and taken down.
import { once } from 'node:events'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export type Log = (who: string, text: string) => void

/** The header the gateway forwards the time left of its caller's budget on. */
export const DEADLINE_HEADER = 'x-request-timeout-ms'

/** How the payments upstream answers a charge. */
export interface Scripted {
  status: number
  /** Sent as `Retry-After` (seconds). */
  retryAfter?: number
  /** Wait this long before answering. */
  delayMs?: number
}

export type PaymentsMode = 'healthy' | 'flaky'

const PRODUCTS: Record<string, { name: string, price: number }> = {
  1: { name: 'coffee', price: 350 },
  2: { name: 'bagel', price: 275 }
}

function sendJson (res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}

function readBody (req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

/** ` budget=123ms` when the caller forwarded what is left of its deadline. */
function budgetOf (req: IncomingMessage): string {
  const left = req.headers[DEADLINE_HEADER]
  return typeof left === 'string' ? `  budget=${left}ms` : ''
}

/**
 * Answers after `ms`, unless the caller goes away first (a cancelled hedge, a
 * deadline that passed): then `onGone` is told and nothing is sent.
 */
function answerLater (res: ServerResponse, ms: number, answer: () => void, onGone: () => void): void {
  const timer = setTimeout(answer, ms)
  res.on('close', () => {
    if (res.writableEnded) return
    clearTimeout(timer)
    onGone()
  })
}

/** A server whose sockets can all be cut, so that it can stop (and start again on its port) at once. */
class Server {
  readonly server: http.Server
  private readonly sockets = new Set<Socket>()
  port = 0

  constructor (handler: http.RequestListener) {
    this.server = http.createServer(handler)
    this.server.on('connection', (socket) => {
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
    })
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  async listen (port = this.port): Promise<void> {
    if (this.server.listening) return
    this.server.listen(port, '127.0.0.1')
    await once(this.server, 'listening')
    this.port = (this.server.address() as AddressInfo).port
  }

  async stop (): Promise<void> {
    if (!this.server.listening) return
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    for (const socket of this.sockets) socket.destroy()
    await closed
  }
}

export type ReplicaMode = 'healthy' | 'bad'

export interface Catalog {
  /** One URL per replica. */
  urls: string[]
  /** The names the replicas log under: `catalog-a`, `catalog-b`, ... */
  names: string[]
  /** `'bad'`: the replica answers every request with 503. */
  setMode (replica: number, mode: ReplicaMode): void
  /** The next request that reaches any replica stalls for `ms` before it is answered. */
  stallNext (ms: number): void
  /** Requests each replica has received. */
  hits: number[]
  close (): Promise<void>
}

/** Three replicas of the catalog service: `GET /products/:id`. */
export async function startCatalog (log: Log, replicas = 3): Promise<Catalog> {
  const names = Array.from({ length: replicas }, (_, i) => `catalog-${String.fromCharCode(97 + i)}`)
  const modes: ReplicaMode[] = names.map(() => 'healthy')
  const hits = names.map(() => 0)
  let stallMs = 0
  const servers = names.map((name, i) => new Server((req, res) => {
    hits[i]++
    const seen = `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}${budgetOf(req)}`
    if (modes[i] === 'bad') {
      log(name, `${seen}  -> 503 (this replica is bad)`)
      sendJson(res, 503, { error: 'catalog replica in trouble' })
      return
    }
    const id = /^\/products\/(\w+)$/.exec(req.url ?? '')?.[1]
    const product = id === undefined ? undefined : PRODUCTS[id]
    const status = product === undefined ? 404 : 200
    const answer = (): void => sendJson(res, status, product ?? { error: 'no such product' })
    if (stallMs > 0) {
      const ms = stallMs
      stallMs = 0
      log(name, `${seen}  ... stalls (${ms} ms before it would answer)`)
      answerLater(res, ms, answer, () => log(name, '  the stalled request was cancelled by the gateway: a hedge answered first'))
      return
    }
    log(name, `${seen}  -> ${status}`)
    answer()
  }))
  for (const server of servers) await server.listen(0)
  return {
    urls: servers.map((server) => server.url),
    names,
    setMode (replica, mode) {
      modes[replica] = mode
    },
    stallNext (ms) {
      stallMs = ms
    },
    hits,
    close: async () => { await Promise.all(servers.map((server) => server.stop())) }
  }
}

export interface Payments {
  url: string
  /** The next requests get these answers, in order, before the mode applies again. */
  script (answers: Scripted[]): void
  /**
   * `'flaky'`: two charges in three answer 503 at first (every third charge
   * with `Retry-After: 1`), and succeed when retried.
   */
  setMode (mode: PaymentsMode): void
  /** Stops listening: calls get "connection refused". */
  stop (): Promise<void>
  /** Listens again on the same port. */
  start (): Promise<void>
  close (): Promise<void>
}

/** The flaky upstream: `POST /v1/charges`, scripted answers, a flaky mode and a switch to take it down. */
export async function startPayments (log: Log): Promise<Payments> {
  const queue: Scripted[] = []
  let mode: PaymentsMode = 'healthy'
  let paid = 0
  // Flaky mode decides per charge, by its Idempotency-Key: a charge's first attempt may fail, its retry succeeds.
  const charges = new Map<string, number>()

  function flakyAnswer (key: string): Scripted {
    const seen = charges.get(key)
    if (seen !== undefined) return { status: 200 }
    const number = charges.size + 1
    charges.set(key, number)
    if (charges.size > 1_000) charges.delete(charges.keys().next().value as string)
    if (number % 3 === 1) return { status: 503, retryAfter: 1 }
    if (number % 3 === 2) return { status: 503 }
    return { status: 200 }
  }

  const server = new Server((req, res) => {
    readBody(req).then((body) => {
      const key = String(req.headers['idempotency-key'])
      const answer = queue.shift() ?? (mode === 'flaky' ? flakyAnswer(key) : { status: 200 })
      const retryAfter = answer.retryAfter === undefined ? '' : ` (Retry-After: ${answer.retryAfter})`
      const seen = `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}  idempotency-key=${key.slice(0, 8)}…${budgetOf(req)}`
      const send = (): void => {
        if (answer.status !== 200) {
          const headers: Record<string, string> = answer.retryAfter === undefined ? {} : { 'retry-after': String(answer.retryAfter) }
          sendJson(res, answer.status, { error: 'payments are having a moment' }, headers)
          return
        }
        const { amount } = JSON.parse(body) as { amount: number }
        sendJson(res, 200, { chargeId: `ch_${++paid}`, amount })
      }
      if (answer.delayMs === undefined) {
        log('payments', `${seen}  -> ${answer.status}${retryAfter}`)
        send()
        return
      }
      log('payments', `${seen}  ... answers ${answer.status} in ${answer.delayMs} ms`)
      answerLater(res, answer.delayMs, send, () => log('payments', '  the gateway hung up before the answer: its deadline passed'))
    }, (error: Error) => res.destroy(error))
  })
  await server.listen(0)
  return {
    url: server.url,
    script (answers) {
      queue.push(...answers)
    },
    setMode (next) {
      mode = next
    },
    stop: () => server.stop(),
    start: () => server.listen(),
    close: () => server.stop()
  }
}

export interface Tokens {
  url: string
  close (): Promise<void>
}

/**
 * A token stream, as an LLM API sends one: `GET /v1/stream` answers six
 * Server-Sent Events 30 ms apart, from the one after `Last-Event-ID`. The
 * first connection drops after the third event.
 */
export async function startTokens (log: Log): Promise<Tokens> {
  let connections = 0
  const server = new Server((req, res) => {
    const lastEventId = req.headers['last-event-id']
    const first = connections++ === 0
    log('tokens', `${req.method} ${req.url}${lastEventId === undefined ? '' : `  last-event-id=${lastEventId}`}`)
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    let id = Number(lastEventId ?? 0)
    const timer = setInterval(() => {
      res.write(`id: ${++id}\ndata: token ${id}\n\n`)
      if (first && id === 3) {
        clearInterval(timer)
        setTimeout(() => {
          log('tokens', '  the connection drops after event 3')
          res.socket?.destroy()
        }, 10)
      } else if (id >= 6) {
        res.end()
      }
    }, 30)
    res.on('close', () => clearInterval(timer))
  })
  await server.listen(0)
  return { url: server.url, close: () => server.stop() }
}
