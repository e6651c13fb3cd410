// The app under demonstration: a small checkout gateway with two named clients.
import Fastify, { type FastifyInstance } from 'fastify'
import resilientHttp, { CircuitOpenError, HttpClientError, requestIdGenerator, TimeoutError } from 'fastify-resilient-http'

// `import('…').HttpClient` rather than the bare `HttpClient`, which TypeScript
// cannot name in declaration output (this repo's tsconfig has `declaration`).
declare module 'fastify-resilient-http' {
  interface HttpClients {
    catalog: import('fastify-resilient-http').HttpClient
    payments: import('fastify-resilient-http').HttpClient
  }
}

/** How long the payments circuit stays open before it half-opens. */
export const RECOVERY_MS = 1_500

export interface Upstreams {
  catalogUrl: string
  paymentsUrl: string
}

export async function buildGateway ({ catalogUrl, paymentsUrl }: Upstreams): Promise<FastifyInstance> {
  // The inbound x-request-id (when valid) becomes request.id: in the logs, on the reply and upstream.
  const app = Fastify({ genReqId: requestIdGenerator() })

  await app.register(resilientHttp, {
    defaults: { timeout: 1_000, totalTimeout: 5_000 },
    clients: {
      catalog: { baseUrl: catalogUrl },
      payments: {
        baseUrl: `${paymentsUrl}/v1`,
        retry: { maxAttempts: 3, backoffInitialMs: 100, backoffMaxMs: 400 },
        // Small numbers so that the demonstration fits in a few seconds.
        circuitBreaker: { failureThreshold: 3, recoveryMs: RECOVERY_MS }
      }
    }
  })

  app.get<{ Params: { id: string } }>('/products/:id', async (request, reply) => {
    const res = await app.httpClients.catalog.get(`/products/${encodeURIComponent(request.params.id)}`)
    return reply.code(res.statusCode).send(await res.json())
  })

  app.post<{ Body: { productId: string } }>('/checkout', async (request) => {
    const { catalog, payments } = app.httpClients
    const product = await (await catalog.get(`/products/${encodeURIComponent(request.body.productId)}`)).raiseForStatus().json<{ name: string, price: number }>()
    // The same Idempotency-Key goes with every attempt, which makes this POST safe to retry.
    const charge = await payments.post('/charges', { json: { amount: product.price }, idempotencyKey: true })
    const { chargeId } = await charge.raiseForStatus().json<{ chargeId: string }>()
    return { product: product.name, chargeId, attempts: charge.attempts }
  })

  app.get('/stats', async () => ({
    catalog: app.httpClients.catalog.stats(),
    payments: app.httpClients.payments.stats()
  }))

  app.setErrorHandler(async (error, _request, reply) => {
    if (error instanceof CircuitOpenError) {
      return reply.code(503).header('retry-after', Math.ceil(error.remainingMs / 1000))
        .send({ code: error.code, error: `${error.clientName} is unavailable`, retryInMs: error.remainingMs })
    }
    if (error instanceof HttpClientError) {
      return reply.code(error instanceof TimeoutError ? 504 : 502).send({ code: error.code, error: error.message })
    }
    return reply.send(error)
  })

  return app
}
