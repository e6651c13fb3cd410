// The app under demonstration: a small checkout gateway with its named
// clients: catalog (three replicas, hedged), payments (one origin, a circuit
// breaker), tokens (a stream of Server-Sent Events), documents (forms and
// uploads), identity and accounts (a bearer token refreshed after a 401) and
// quotes (a rate limit).
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify'
import resilientHttp, { CircuitOpenError, HttpClientError, HttpStatusError, requestIdGenerator, TimeoutError } from 'fastify-resilient-http'

// `import('…').HttpClient` rather than the bare `HttpClient`, which TypeScript
// cannot name in declaration output (this repo's tsconfig has `declaration`).
declare module 'fastify-resilient-http' {
  interface HttpClients {
    catalog: import('fastify-resilient-http').HttpClient
    payments: import('fastify-resilient-http').HttpClient
    tokens: import('fastify-resilient-http').HttpClient
    documents: import('fastify-resilient-http').HttpClient
    identity: import('fastify-resilient-http').HttpClient
    accounts: import('fastify-resilient-http').HttpClient
    quotes: import('fastify-resilient-http').HttpClient
  }
}

/** How long the payments circuit stays open before it half-opens. */
export const RECOVERY_MS = 1_500
/** How long a catalog GET waits for response headers before a hedge goes to another replica. */
export const HEDGE_DELAY_MS = 100
/** How long a bad catalog replica stays out. */
export const EJECTION_MS = 1_000
/** How long the token stream may go without a byte before it is cut. */
export const IDLE_TIMEOUT_MS = 300
/** Calls a second the gateway sends to quotes. */
export const QUOTES_PER_SECOND = 10

export interface Upstreams {
  catalogUrls: string[]
  paymentsUrl: string
  tokensUrl: string
  documentsUrl: string
  accountsUrl: string
  quotesUrl: string
  /** Where the gateway reports what it keeps from its callers (the errors' own messages). */
  log: (who: string, text: string) => void
}

/** What the caller is told for each error code: never an upstream's message or an internal address. */
const PUBLIC_MESSAGES: Record<string, string> = {
  FRH_CIRCUIT_OPEN: 'is unavailable, try again later',
  FRH_OVERLOADED: 'is overloaded, try again later',
  FRH_TIMEOUT: 'did not answer in time',
  FRH_UPSTREAM: 'could not be reached',
  FRH_HTTP_STATUS: 'answered with an error',
  FRH_RESPONSE_TOO_LARGE: 'answered with too much data',
  FRH_CLIENT_CLOSED: 'is shutting down',
  FRH_RATE_LIMITED: 'is busy, try again later',
  FRH_AUTHENTICATION: 'could not be signed in to'
}

export async function buildGateway ({ catalogUrls, paymentsUrl, tokensUrl, documentsUrl, accountsUrl, quotesUrl, log }: Upstreams): Promise<FastifyInstance> {
  // The inbound x-request-id (when valid) becomes request.id: in the logs, on the reply and upstream.
  const app = Fastify({ genReqId: requestIdGenerator() })

  await app.register(resilientHttp, {
    // Read the caller's budget from x-request-timeout-ms and forward what is left of it.
    deadline: true,
    defaults: { timeout: 1_000, totalTimeout: 5_000 },
    clients: {
      catalog: {
        baseUrl: catalogUrls,
        retry: { backoffInitialMs: 20, backoffMaxMs: 100 },
        hedge: { delayMs: HEDGE_DELAY_MS },
        // Small numbers so that the demonstration fits in a few seconds.
        outlierDetection: { consecutiveFailures: 2, baseEjectionMs: EJECTION_MS }
      },
      payments: {
        baseUrl: `${paymentsUrl}/v1`,
        retry: { maxAttempts: 3, backoffInitialMs: 100, backoffMaxMs: 400 },
        circuitBreaker: { failureThreshold: 3, recoveryMs: RECOVERY_MS }
      },
      tokens: {
        baseUrl: tokensUrl,
        // A token stream is bounded by silence, not by the call's timeout.
        idleTimeout: IDLE_TIMEOUT_MS,
        retry: { backoffInitialMs: 50, backoffMaxMs: 100 }
      },
      documents: { baseUrl: `${documentsUrl}/v1` },
      identity: { baseUrl: `${accountsUrl}/oauth` },
      accounts: {
        baseUrl: `${accountsUrl}/v1`,
        // Called before the first call, then only after a 401: the calls refused with one token share one refresh.
        auth: { token: fetchToken }
      },
      quotes: {
        baseUrl: `${quotesUrl}/v1`,
        // The upstream sells 10 calls a second; its 429 with Retry-After pauses this limit rather than opening the circuit.
        rateLimit: { perSecond: QUOTES_PER_SECOND, burst: 2, maxWaitMs: 2_000 }
      }
    }
  })

  /** A client-credentials grant from the identity provider (a form body, as OAuth 2.0 asks). */
  async function fetchToken (): Promise<string> {
    log('gateway', '  auth.token(): asks the identity provider for a token')
    const res = await app.httpClients.identity.post('/token', { form: { grant_type: 'client_credentials', client_id: 'gateway' } })
    const { access_token: token } = await res.raiseForStatus().json<{ access_token: string }>()
    return token
  }

  app.get<{ Params: { id: string } }>('/products/:id', async (request, reply) => {
    const res = await app.httpClients.catalog.get(`/products/${encodeURIComponent(request.params.id)}`)
    const product = await res.json<Record<string, unknown>>()
    return reply.code(res.statusCode).send({ ...product, attempts: res.attempts })
  })

  app.post<{ Body: { productId: string } }>('/checkout', {
    schema: {
      body: {
        type: 'object',
        properties: { productId: { type: 'string', minLength: 1, maxLength: 64 } },
        required: ['productId']
      }
    }
  }, async (request) => {
    const { catalog, payments } = app.httpClients
    const product = await (await catalog.get(`/products/${encodeURIComponent(request.body.productId)}`)).raiseForStatus().json<{ name: string, price: number }>()
    // The same Idempotency-Key goes with every attempt, which makes this POST safe to retry.
    const charge = await payments.post('/charges', { json: { amount: product.price }, idempotencyKey: true })
    const { chargeId } = await charge.raiseForStatus().json<{ chargeId: string }>()
    return { product: product.name, chargeId, attempts: charge.attempts }
  })

  // Relays a token stream to the caller: a drop or a stall upstream is resumed (once in a row) with
  // Last-Event-ID, and a caller who goes away ends the upstream call.
  app.get('/tokens', async (request, reply) => {
    const stream = await app.httpClients.tokens.stream('/v1/stream', { resume: { maxReconnects: 1 } })
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
    reply.raw.on('close', () => {
      if (reply.raw.writableEnded) return
      log('gateway', '  the caller went away: the upstream stream is closed')
      stream.close()
    })
    try {
      for await (const event of stream.events()) reply.raw.write(`id: ${event.id ?? ''}\ndata: ${event.data}\n\n`)
    } catch (error) {
      request.log.warn({ err: error }, 'the token stream failed')
      const { code, kind } = error as { code?: string, kind?: string }
      log('gateway', `  the token stream failed: ${error instanceof Error ? error.message : String(error)}${kind === undefined ? '' : ` (kind '${kind}')`}`)
      // The caller hears that the stream broke, not why.
      reply.raw.write(`event: error\ndata: ${JSON.stringify({ code: code ?? 'INTERNAL' })}\n\n`)
    }
    reply.raw.end()
  })

  // Sends the caller's feedback on as a urlencoded form.
  app.post<{ Body: { rating: number, tags: string[] } }>('/feedback', async (request) => {
    const { rating, tags } = request.body
    const res = await app.httpClients.documents.post('/forms', { form: { rating, tags, anonymous: true } })
    return res.raiseForStatus().json()
  })

  // Uploads the caller's text as a file, with its title, in a multipart form.
  app.post<{ Body: { title: string, text: string } }>('/notes', async (request) => {
    const { title, text } = request.body
    const form = new FormData()
    form.append('title', title)
    form.append('file', new Blob([text], { type: 'text/markdown' }), `${title}.md`)
    const res = await app.httpClients.documents.post('/files', { body: form })
    return res.raiseForStatus().json()
  })

  app.get('/me', async () => {
    const res = await app.httpClients.accounts.get('/me')
    const profile = await res.raiseForStatus().json<Record<string, unknown>>()
    return { ...profile, attempts: res.attempts }
  })

  app.get<{ Params: { symbol: string } }>('/quotes/:symbol', async (request) => {
    const res = await app.httpClients.quotes.get(`/quotes/${encodeURIComponent(request.params.symbol)}`)
    const quote = await res.raiseForStatus().json<Record<string, unknown>>()
    return { ...quote, attempts: res.attempts }
  })

  app.get('/stats', async () => ({
    catalog: app.httpClients.catalog.stats(),
    payments: app.httpClients.payments.stats()
  }))

  app.setErrorHandler(async (error: FastifyError, request, reply) => {
    if (error instanceof HttpClientError) {
      // The full story (an internal address, an upstream's status) goes to the logs, not to the caller.
      request.log.warn({ err: error }, 'upstream call failed')
      log('gateway', `  ${error.code}: ${error.message}`)
      if (error instanceof TimeoutError && error.kind === 'deadline') {
        // The caller's own budget ran out: a 504 (error.statusCode), and the caller knows why.
        return reply.code(504).send({ code: error.code, error: 'the request ran out of its time budget' })
      }
      if (error instanceof HttpStatusError && error.clientName === 'catalog' && error.upstreamStatusCode === 404) {
        // One upstream answer the caller may hear about: the product it asked for does not exist.
        return reply.code(404).send({ code: 'NOT_FOUND', error: 'no such product' })
      }
      const message = `${error.clientName} ${PUBLIC_MESSAGES[error.code] ?? 'failed'}`
      // An open circuit knows when it is worth trying again.
      const retryAfter = error instanceof CircuitOpenError && error.remainingMs > 0
        ? { 'retry-after': String(Math.ceil(error.remainingMs / 1000)) }
        : {}
      // statusCode is the gateway's own 502, 503 or 504 (500 for a bug of ours), never the upstream's.
      return reply.code(error.statusCode).headers(retryAfter).send({ code: error.code, error: message })
    }
    const status = error.statusCode ?? 500
    if (status < 500) return reply.code(status).send({ code: error.code, error: error.message })
    request.log.error({ err: error }, 'request failed')
    return reply.code(500).send({ code: 'INTERNAL', error: 'internal error' })
  })

  return app
}
