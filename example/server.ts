// `npm run example:server`: the same gateway and upstreams as a server to try
// by hand with curl. PORT (default 3000) sets the gateway's port.
import { buildGateway } from './gateway'
import { log, watchClientEvents } from './timeline'
import { startUpstreams, upstreamUrls } from './upstreams'

const MODES = ['healthy', 'flaky', 'down'] as const
type Mode = typeof MODES[number]

async function main (): Promise<void> {
  const port = Number(process.env.PORT ?? 3000)
  const stopWatching = watchClientEvents()
  const upstreams = await startUpstreams(log)
  const { catalog, payments } = upstreams
  const app = await buildGateway({ ...upstreamUrls(upstreams), log })

  // Not part of a real gateway: switches the payments upstream's behaviour.
  app.post<{ Params: { mode: Mode } }>('/_demo/payments/:mode', {
    schema: { params: { type: 'object', properties: { mode: { enum: MODES } }, required: ['mode'] } }
  }, async (request) => {
    const { mode } = request.params
    if (mode === 'down') {
      await payments.stop()
    } else {
      await payments.start()
      payments.setMode(mode)
    }
    log('payments', `is now ${mode}`)
    return { payments: mode }
  })

  // Not part of a real gateway either: makes the second catalog replica answer 503s, or heals it.
  app.post<{ Params: { mode: 'bad' | 'healthy' } }>('/_demo/catalog/:mode', {
    schema: { params: { type: 'object', properties: { mode: { enum: ['bad', 'healthy'] } }, required: ['mode'] } }
  }, async (request) => {
    catalog.setMode(1, request.params.mode)
    log(catalog.names[1], `is now ${request.params.mode}`)
    return { [catalog.names[1]]: request.params.mode }
  })

  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`gateway listening on ${address}; try:

  curl -i ${address}/products/1 -H 'x-request-id: my-id-1'
  curl -i -X POST ${address}/checkout -H 'content-type: application/json' -d '{"productId":"1"}'
  curl -i -X POST ${address}/checkout -H 'content-type: application/json' -H 'x-request-timeout-ms: 5' -d '{"productId":"1"}'
  curl ${address}/stats
  curl -N ${address}/tokens                        # a stream of Server-Sent Events, relayed
  curl -X POST ${address}/feedback -H 'content-type: application/json' -d '{"rating":5,"tags":["fast","clear"]}'
  curl -X POST ${address}/notes -H 'content-type: application/json' -d '{"title":"plan","text":"# Plan"}'
  curl ${address}/me                               # a bearer token from the identity provider
  curl ${address}/quotes/ACME                      # at most 10 calls a second to quotes

  curl -X POST ${address}/_demo/payments/flaky     # 2 charges in 3 answer 503 at first (every third with Retry-After: 1,
                                                   # which opens the circuit for that second); their retries succeed
  curl -X POST ${address}/_demo/payments/down      # connection refused: 3 failed attempts open the circuit
  curl -X POST ${address}/_demo/payments/healthy   # back up: after 1.5 s the circuit half-opens, a probe closes it
  curl -X POST ${address}/_demo/catalog/bad        # ${catalog.names[1]} answers 503: retried elsewhere, then ejected for 1 s
  curl -X POST ${address}/_demo/catalog/healthy

Ctrl-C stops it.
`)

  const shutdown = (): void => {
    log('gateway', 'closing')
    app.close()
      .then(() => upstreams.close())
      .then(stopWatching, (error: unknown) => {
        console.error(error)
        process.exitCode = 1
      })
  }
  process.once('SIGINT', shutdown)
  process.once('SIGTERM', shutdown)
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
