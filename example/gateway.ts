// The app under demonstration: a small checkout gateway with two named
// clients, catalog (three replicas, hedged) and payments (one origin).
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify'
import resilientHttp, { CircuitOpenError, HttpClientError, HttpStatusError, requestIdGenerator, TimeoutError } from 'fastify-resilient-http'

// `import('…').HttpClient` rather than the bare `HttpClient`, which TypeScript
// cannot name in declaration output (this repo's tsconfig has `declaration`).
declare module 'fastify-resilient-http' {
  interface HttpClients {
    catalog: import('fastify-resilient-http').HttpClient
    payments: import('fastify-resilient-http').HttpClient
    tokens: import('fastify-resilient-http').HttpClient
  }
}

/** How long the payments circuit stays open before it half-opens. */
export const RECOVERY_MS = 1_500
/** How long a catalog GET waits for response headers before a hedge goes to another replica. */
export const HEDGE_DELAY_MS = 100
/** How long a bad catalog replica stays out. */
export const EJECTION_MS = 1_000

export interface Upstreams {
  catalogUrls: string[]
  paymentsUrl: string
  tokensUrl: string
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
  FRH_CLIENT_CLOSED: 'is shutting down'
}

export async function buildGateway ({ catalogUrls, paymentsUrl, tokensUrl, log }: Upstreams): Promise<FastifyInstance> {
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
        idleTimeout: 2_000,
        retry: { backoffInitialMs: 50, backoffMaxMs: 100 }
      }
    }
  })

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

  // Relays a token stream to the caller: a drop upstream is resumed with Last-Event-ID,
  // and a caller who goes away ends the upstream call.
  app.get('/tokens', async (request, reply) => {
    const stream = await app.httpClients.tokens.stream('/v1/stream', { resume: true })
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
    reply.raw.on('close', () => stream.close())
    try {
      for await (const event of stream.events()) reply.raw.write(`id: ${event.id ?? ''}\ndata: ${event.data}\n\n`)
    } catch (error) {
      request.log.warn({ err: error }, 'the token stream failed')
    }
    reply.raw.end()
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
