// The two services the gateway calls, as real HTTP servers on 127.0.0.1.
import { once } from 'node:events'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export type Log = (who: string, text: string) => void

/** How the payments upstream answers a charge. */
export interface Scripted {
  status: number
  /** Sent as `Retry-After` (seconds). */
  retryAfter?: number
}

export type PaymentsMode = 'healthy' | 'flaky'

const FLAKY: Scripted[] = [{ status: 503, retryAfter: 1 }, { status: 200 }, { status: 503 }]

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

/** The healthy upstream: `GET /products/:id`. */
export async function startCatalog (log: Log): Promise<{ url: string, close (): Promise<void> }> {
  const server = new Server((req, res) => {
    const id = /^\/products\/(\w+)$/.exec(req.url ?? '')?.[1]
    const product = id === undefined ? undefined : PRODUCTS[id]
    const status = product === undefined ? 404 : 200
    log('catalog', `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}  -> ${status}`)
    sendJson(res, status, product ?? { error: 'no such product' })
  })
  await server.listen(0)
  return { url: server.url, close: () => server.stop() }
}

export interface Payments {
  url: string
  /** The next charges get these answers, in order, before the mode applies again. */
  script (answers: Scripted[]): void
  /** `'flaky'` fails two charges out of three (503, with and without `Retry-After`). */
  setMode (mode: PaymentsMode): void
  /** Stops listening: calls get "connection refused". */
  stop (): Promise<void>
  /** Listens again on the same port. */
  start (): Promise<void>
  close (): Promise<void>
}

/** The flaky upstream: `POST /v1/charges`, scripted answers, and a switch to take it down. */
export async function startPayments (log: Log): Promise<Payments> {
  const queue: Scripted[] = []
  let mode: PaymentsMode = 'healthy'
  let charges = 0
  let paid = 0
  const server = new Server((req, res) => {
    readBody(req).then((body) => {
      charges++
      const answer = queue.shift() ?? (mode === 'flaky' ? FLAKY[charges % 3] : { status: 200 })
      const retryAfter = answer.retryAfter === undefined ? '' : ` (Retry-After: ${answer.retryAfter})`
      log('payments', `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}  idempotency-key=${String(req.headers['idempotency-key']).slice(0, 8)}…  -> ${answer.status}${retryAfter}`)
      if (answer.status !== 200) {
        const headers: Record<string, string> = answer.retryAfter === undefined ? {} : { 'retry-after': String(answer.retryAfter) }
        sendJson(res, answer.status, { error: 'payments are having a moment' }, headers)
        return
      }
      const { amount } = JSON.parse(body) as { amount: number }
      sendJson(res, 200, { chargeId: `ch_${++paid}`, amount })
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
