// `npm run example:server`: the same gateway and upstreams as a server to try
// by hand with curl. PORT (default 3000) sets the gateway's port.
import { buildGateway } from './gateway'
import { log, watchClientEvents } from './timeline'
import { startCatalog, startPayments } from './upstreams'

const MODES = ['healthy', 'flaky', 'down'] as const
type Mode = typeof MODES[number]

async function main (): Promise<void> {
  const port = Number(process.env.PORT ?? 3000)
  const stopWatching = watchClientEvents()
  const catalog = await startCatalog(log)
  const payments = await startPayments(log)
  const app = await buildGateway({ catalogUrl: catalog.url, paymentsUrl: payments.url })

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

  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`gateway listening on ${address}; try:

  curl -i ${address}/products/1 -H 'x-request-id: my-id-1'
  curl -i -X POST ${address}/checkout -H 'content-type: application/json' -d '{"productId":"1"}'
  curl ${address}/stats

  curl -X POST ${address}/_demo/payments/flaky     # 2 charges in 3 answer 503 (one with Retry-After: 1)
  curl -X POST ${address}/_demo/payments/down      # connection refused: 3 failed attempts open the circuit
  curl -X POST ${address}/_demo/payments/healthy   # back up: after 1.5 s the circuit half-opens, a probe closes it

Ctrl-C stops it.
`)

  const shutdown = (): void => {
    log('gateway', 'closing')
    app.close()
      .then(() => Promise.all([catalog.close(), payments.close()]))
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
