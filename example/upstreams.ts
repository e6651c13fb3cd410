// The services the gateway calls, as real HTTP servers on 127.0.0.1: three
// replicas of catalog, a payments service that can be scripted, made flaky or
// slow, and taken down, a token stream, a service that reports the forms and
// files it receives, an identity provider with the service it guards, and a
// rate-limited market-data API.
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

function readBytes (req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => resolve(Buffer.concat(chunks)))
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
    readBytes(req).then((bytes) => {
      const body = bytes.toString('utf8')
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
  /**
   * `n`: from now on every connection stalls once it has sent event `n` (at
   * once, when it resumes past it): it sends nothing more and stays open.
   * `null`: connections send every event again.
   */
  stallAfter (n: number | null): void
  close (): Promise<void>
}

/**
 * A token stream, as an LLM API sends one: `GET /v1/stream` answers six
 * Server-Sent Events 30 ms apart, from the one after `Last-Event-ID`. The
 * first connection drops after the third event.
 */
export async function startTokens (log: Log): Promise<Tokens> {
  let connections = 0
  let stallAfter: number | null = null
  const server = new Server((req, res) => {
    const lastEventId = req.headers['last-event-id']
    const first = connections++ === 0
    log('tokens', `${req.method} ${req.url}${lastEventId === undefined ? '' : `  last-event-id=${lastEventId}`}`)
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    // The headers go now, not with the first event: a stream that stalls at once has still answered.
    res.flushHeaders()
    let id = Number(lastEventId ?? 0)
    let dropped = false
    const stall = stallAfter
    const stalls = (): boolean => {
      if (stall === null || id < stall) return false
      clearInterval(timer)
      log('tokens', `  stalls after event ${id}: sends nothing more, keeps the connection open`)
      return true
    }
    const timer = setInterval(() => {
      res.write(`id: ${++id}\ndata: token ${id}\n\n`)
      if (first && id === 3) {
        clearInterval(timer)
        setTimeout(() => {
          log('tokens', '  the connection drops after event 3')
          dropped = true
          res.socket?.destroy()
        }, 10)
      } else if (id >= 6) {
        res.end()
      } else {
        stalls()
      }
    }, 30)
    stalls()
    res.on('close', () => {
      clearInterval(timer)
      if (!dropped && !res.writableEnded) log('tokens', `  the gateway closed the stream after event ${id}`)
    })
  })
  await server.listen(0)
  return {
    url: server.url,
    stallAfter (n) {
      stallAfter = n
    },
    close: () => server.stop()
  }
}

export interface Documents {
  url: string
  close (): Promise<void>
}

/** What the documents upstream says it received. */
export interface Received {
  contentType: string
  /** The `content-length` header, or `'none (chunked)'`. */
  contentLength: string
  fields: Record<string, string | string[]>
  files: Array<{ field: string, name: string, type: string, bytes: number }>
}

/**
 * A service that reports what it received: `POST /v1/forms` (a urlencoded
 * form) and `POST /v1/files` (a multipart upload), each answered with its
 * content type, length, fields and files.
 */
export async function startDocuments (log: Log): Promise<Documents> {
  const server = new Server((req, res) => {
    readBytes(req).then(async (bytes) => {
      const contentType = req.headers['content-type'] ?? ''
      // The platform's own parser reads both kinds of form.
      const form = await new Response(new Uint8Array(bytes), { headers: { 'content-type': contentType } }).formData()
      const received: Received = { contentType, contentLength: req.headers['content-length'] ?? 'none (chunked)', fields: {}, files: [] }
      for (const [field, value] of form) {
        if (typeof value !== 'string') {
          received.files.push({ field, name: value.name, type: value.type, bytes: value.size })
          continue
        }
        const seen = received.fields[field]
        received.fields[field] = seen === undefined ? value : [...(Array.isArray(seen) ? seen : [seen]), value]
      }
      const files = received.files.map((file) => `  ${file.field}=${file.name} (${file.type}, ${file.bytes} bytes)`).join('')
      log('documents', `${req.method} ${req.url}  content-type=${contentType.replace(/boundary=.*/, 'boundary=…')}  content-length=${received.contentLength}`)
      log('documents', `  fields ${JSON.stringify(received.fields)}${files}`)
      sendJson(res, 200, received)
    }).catch((error: Error) => sendJson(res, 400, { error: error.message }))
  })
  await server.listen(0)
  return { url: server.url, close: () => server.stop() }
}

export interface Accounts {
  url: string
  /** Every token issued so far stops being accepted (a key rotation). */
  revokeTokens (): void
  close (): Promise<void>
}

/**
 * An identity provider and the service it guards, on one server: `POST
 * /oauth/token` issues bearer tokens for a client-credentials form; `GET
 * /v1/me` answers 401 to any other token than the newest, not revoked one.
 */
export async function startAccounts (log: Log): Promise<Accounts> {
  let issued = 0
  let valid: string | null = null
  const server = new Server((req, res) => {
    readBytes(req).then((bytes) => {
      if (req.method === 'POST' && req.url === '/oauth/token') {
        const form = new URLSearchParams(bytes.toString('utf8'))
        valid = `tok-${++issued}`
        log('identity', `${req.method} ${req.url}  grant_type=${form.get('grant_type')} client_id=${form.get('client_id')}  -> ${valid}`)
        sendJson(res, 200, { access_token: valid, token_type: 'Bearer' })
        return
      }
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
      const seen = `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}  authorization=Bearer ${token ?? '(none)'}`
      if (token === undefined || token !== valid) {
        log('accounts', `${seen}  -> 401 (unknown or revoked token)`)
        sendJson(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' })
        return
      }
      log('accounts', `${seen}  -> 200`)
      sendJson(res, 200, { user: 'ada', plan: 'pro' })
    }, (error: Error) => res.destroy(error))
  })
  await server.listen(0)
  return {
    url: server.url,
    revokeTokens () {
      log('identity', `  revokes ${valid ?? 'every token'}`)
      valid = null
    },
    close: () => server.stop()
  }
}

export interface Quotes {
  url: string
  /** The next request is over the quota: it is answered 429 with `Retry-After: seconds`. */
  overQuotaNext (seconds: number): void
  close (): Promise<void>
}

/** A market-data API that sells a rate: `GET /v1/quotes/:symbol`, and 429 with `Retry-After` when its quota is spent. */
export async function startQuotes (log: Log): Promise<Quotes> {
  let retryAfter = 0
  const server = new Server((req, res) => {
    const seen = `${req.method} ${req.url}  x-request-id=${req.headers['x-request-id']}`
    if (retryAfter > 0) {
      log('quotes', `${seen}  -> 429 (Retry-After: ${retryAfter}): the quota is spent`)
      sendJson(res, 429, { error: 'rate limit exceeded' }, { 'retry-after': String(retryAfter) })
      retryAfter = 0
      return
    }
    const symbol = /^\/v1\/quotes\/(\w+)$/.exec(req.url ?? '')?.[1] ?? '?'
    log('quotes', `${seen}  -> 200`)
    sendJson(res, 200, { symbol, price: [...symbol].reduce((sum, char) => sum + char.charCodeAt(0), 0) / 10 })
  })
  await server.listen(0)
  return {
    url: server.url,
    overQuotaNext (seconds) {
      retryAfter = seconds
    },
    close: () => server.stop()
  }
}

/** Every upstream of the example, each on its own port of 127.0.0.1. */
export interface AllUpstreams {
  catalog: Catalog
  payments: Payments
  tokens: Tokens
  documents: Documents
  accounts: Accounts
  quotes: Quotes
  /** Closes them all. */
  close(): Promise<void>
}

export async function startUpstreams (log: Log): Promise<AllUpstreams> {
  const catalog = await startCatalog(log)
  const payments = await startPayments(log)
  const tokens = await startTokens(log)
  const documents = await startDocuments(log)
  const accounts = await startAccounts(log)
  const quotes = await startQuotes(log)
  return {
    catalog,
    payments,
    tokens,
    documents,
    accounts,
    quotes,
    async close () {
      await Promise.all([catalog.close(), payments.close(), tokens.close(), documents.close(), accounts.close(), quotes.close()])
    }
  }
}

/** What the gateway needs to know of them. */
export function upstreamUrls (upstreams: AllUpstreams): { catalogUrls: string[], paymentsUrl: string, tokensUrl: string, documentsUrl: string, accountsUrl: string, quotesUrl: string } {
  return {
    catalogUrls: upstreams.catalog.urls,
    paymentsUrl: upstreams.payments.url,
    tokensUrl: upstreams.tokens.url,
    documentsUrl: upstreams.documents.url,
    accountsUrl: upstreams.accounts.url,
    quotesUrl: upstreams.quotes.url
  }
}
