// `npm run example`: a gateway with a healthy and a flaky upstream, driven
// through good times, 503s, an outage and a recovery, with a timeline of
// what the clients do about it. Ends by itself in a few seconds.
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { buildGateway, RECOVERY_MS } from './gateway'
import { heading, log, watchClientEvents } from './timeline'
import { startCatalog, startPayments } from './upstreams'

interface Reply {
  statusCode: number
  payload: Record<string, unknown>
}

const safety = setTimeout(() => {
  console.error('the example did not finish within 20 s')
  process.exit(1)
}, 20_000)
safety.unref()

async function main (): Promise<void> {
  const stopWatching = watchClientEvents()
  const catalog = await startCatalog(log)
  const payments = await startPayments(log)
  const app = await buildGateway({ catalogUrl: catalog.url, paymentsUrl: payments.url })
  const gateway = await app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new Agent()
  let sent = 0

  async function send (method: 'GET' | 'POST', path: string, body?: unknown): Promise<Reply> {
    const id = `demo-${++sent}`
    log('client', `${method} ${path}  x-request-id=${id}`)
    const res = await request(`${gateway}${path}`, {
      method,
      dispatcher: agent,
      headers: { 'x-request-id': id, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const payload = await res.body.json() as Record<string, unknown>
    log('client', `<- ${res.statusCode} ${describe(payload)}  (reply x-request-id=${res.headers['x-request-id']})`)
    return { statusCode: res.statusCode, payload }
  }

  const checkout = (): Promise<Reply> => send('POST', '/checkout', { productId: '1' })

  try {
    heading('1. all is well')
    await send('GET', '/products/1')
    await checkout()

    heading('2. payments answers 503 with Retry-After: 1, then 200')
    payments.script([{ status: 503, retryAfter: 1 }, { status: 200 }])
    await checkout()

    heading('3. payments answers 503 twice (no Retry-After): exponential backoff with jitter')
    payments.script([{ status: 503 }, { status: 503 }, { status: 200 }])
    await checkout()

    heading('4. payments goes down: connection refused, and the circuit opens')
    await payments.stop()
    await checkout()

    heading('5. the circuit is open: calls fail fast and nothing is sent; catalog is unaffected')
    await checkout()
    await send('GET', '/products/2')
    const refused = await checkout()

    heading('6. after recoveryMs the circuit half-opens: one probe goes through, fails, and it opens again')
    await sleep(Number(refused.payload.retryInMs ?? RECOVERY_MS) + 100)
    await checkout()

    heading('7. payments is back: the next probe succeeds and the circuit closes')
    await payments.start()
    await sleep(RECOVERY_MS + 100)
    await checkout()
    await checkout()

    heading('stats of the payments client')
    const { requests, successes, failures, retries, shortCircuited, circuit } = app.httpClients.payments.stats()
    log('gateway', JSON.stringify({ requests, successes, failures, retries, shortCircuited, circuit }))
  } finally {
    await agent.close()
    await app.close()
    await catalog.close()
    await payments.close()
    stopWatching()
  }
}

function describe (payload: Record<string, unknown>): string {
  if (payload.chargeId !== undefined) return `charged ${payload.product} (${payload.chargeId}) in ${payload.attempts} attempt(s)`
  if (payload.code === 'FRH_CIRCUIT_OPEN') return `${payload.code} short-circuited: ${payload.error}, retry in ${payload.retryInMs} ms`
  if (payload.code !== undefined) return `${payload.code} ${payload.error}`
  return JSON.stringify(payload)
}

main().then(() => {
  console.log('\ndone: every server, pool and timer is closed, so the process exits by itself')
}, (error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
