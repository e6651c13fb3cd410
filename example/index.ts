// `npm run example`: a gateway with three catalog replicas and a flaky
// payments upstream, driven through good times, Retry-After, backoff, a short
// deadline, a stalled replica, a bad replica, an outage and a recovery; then a
// relayed token stream that drops and resumes, loses its caller, and stalls;
// a form and a file upload; a bearer token refreshed after a 401; and a rate
// limit paused by the upstream's 429. A timeline shows what the clients do
// about each. Ends by itself in a few seconds.
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { buildGateway, EJECTION_MS, IDLE_TIMEOUT_MS, QUOTES_PER_SECOND, RECOVERY_MS } from './gateway'
import { heading, log, nameOrigins, watchClientEvents } from './timeline'
import { DEADLINE_HEADER, startUpstreams, upstreamUrls } from './upstreams'

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
  const upstreams = await startUpstreams(log)
  const { catalog, payments, tokens, accounts, quotes } = upstreams
  nameOrigins(catalog.urls, catalog.names)
  const app = await buildGateway({ ...upstreamUrls(upstreams), log })
  const gateway = await app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new Agent()
  let sent = 0

  async function send (method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
    const id = `demo-${++sent}`
    const extra = Object.entries(headers).map(([name, value]) => `  ${name}=${value}`).join('')
    log('client', `${method} ${path}  x-request-id=${id}${extra}`)
    const res = await request(`${gateway}${path}`, {
      method,
      dispatcher: agent,
      headers: { 'x-request-id': id, ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const payload = await res.body.json() as Record<string, unknown>
    const retryAfter = res.headers['retry-after'] === undefined ? '' : `  retry-after: ${res.headers['retry-after']}`
    log('client', `<- ${res.statusCode} ${describe(payload)}${retryAfter}  (reply x-request-id=${res.headers['x-request-id']})`)
    return { statusCode: res.statusCode, payload }
  }

  const checkout = (headers?: Record<string, string>): Promise<Reply> => send('POST', '/checkout', { productId: '1' }, headers)

  try {
    heading('1. all is well')
    await send('GET', '/products/1')
    await checkout()

    heading('2. payments answers 503 with Retry-After: 1: the circuit opens for that second, other calls fail fast, the retry closes it')
    payments.script([{ status: 503, retryAfter: 1 }, { status: 200 }])
    const waiting = checkout()
    await sleep(200)
    await checkout()
    await waiting

    heading('3. a caller with a 500 ms budget: what is left goes upstream on every attempt, and the retries stop at the deadline')
    payments.script([{ status: 503, delayMs: 300 }, { status: 503, delayMs: 300 }])
    await checkout({ [DEADLINE_HEADER]: '500' })
    await sleep(20) // the upstream notices the hang-up
    await checkout() // a caller without a budget is charged as usual (and its success resets the failure count)

    heading('4. payments answers 503 twice (no Retry-After): exponential backoff with jitter')
    payments.script([{ status: 503 }, { status: 503 }, { status: 200 }])
    await checkout()

    heading('5. a catalog replica stalls: after 100 ms a hedge goes to another replica, answers, and the stalled attempt is cancelled')
    catalog.stallNext(2_000)
    await send('GET', '/products/1')
    const { hedges, hedgeWins } = app.httpClients.catalog.stats()
    log('gateway', `catalog stats: hedges=${hedges} hedgeWins=${hedgeWins}`)

    heading(`6. ${catalog.names[1]} goes bad: its 503s are retried on the other replicas, it is ejected, then it returns`)
    catalog.setMode(1, 'bad')
    const ejected = (): boolean => app.httpClients.catalog.stats().replicas.some((replica) => replica.ejected)
    for (let i = 0; i < 40 && !ejected(); i++) await send('GET', '/products/2')
    const hitsWhenEjected = catalog.hits[1]
    for (let i = 0; i < 3; i++) await send('GET', '/products/2')
    log('gateway', `${catalog.names[1]} got ${catalog.hits[1] - hitsWhenEjected} of the 3 calls made while it was ejected`)
    catalog.setMode(1, 'healthy')
    await sleep(EJECTION_MS + 100)
    const hitsBefore = catalog.hits[1]
    for (let i = 0; i < 20 && catalog.hits[1] === hitsBefore; i++) await send('GET', '/products/2')
    const replicas = app.httpClients.catalog.stats().replicas
    log('gateway', `catalog replicas: ${replicas.map((replica, i) => `${catalog.names[i]} ejections=${replica.ejections} failures=${replica.failures}`).join(', ')}`)

    heading('7. payments goes down: connection refused, and the circuit opens')
    await payments.stop()
    await checkout()

    heading('8. the circuit is open: calls fail fast and nothing is sent; catalog is unaffected')
    await checkout()
    await send('GET', '/products/2')
    await checkout()

    heading('9. after recoveryMs the circuit half-opens: one probe goes through, fails, and it opens again')
    await sleep(RECOVERY_MS + 100)
    await checkout()

    heading('10. payments is back: the next probe succeeds and the circuit closes')
    await payments.start()
    await sleep(RECOVERY_MS + 100)
    await checkout()
    await checkout()

    heading('11. a token stream: the upstream drops after event 3, the stream resumes with Last-Event-ID, the caller sees one sequence')
    log('client', 'GET /tokens')
    const stream = await request(`${gateway}/tokens`, { dispatcher: agent })
    log('client', `<- ${stream.statusCode} ${describeEvents(await stream.body.text())}`)

    heading('12. the caller hangs up after event 2: the gateway closes the upstream stream at once')
    log('client', 'GET /tokens')
    const leaving = await request(`${gateway}/tokens`, { dispatcher: agent })
    let received = ''
    for await (const chunk of leaving.body) {
      received += String(chunk)
      if (/^id: 2$/m.test(received)) break // leaving the loop destroys the body: the connection is cut
    }
    log('client', `hangs up after ${describeEvents(received)}`)
    await sleep(100) // the hang-up travels to the upstream

    heading(`13. the token upstream stalls after event 2: ${IDLE_TIMEOUT_MS} ms of silence cut the stream, it resumes once, stalls again, and the relay ends with a TimeoutError of kind 'idle'`)
    tokens.stallAfter(2)
    log('client', 'GET /tokens')
    const stalled = await request(`${gateway}/tokens`, { dispatcher: agent })
    log('client', `<- ${stalled.statusCode} ${describeEvents(await stalled.body.text())}`)
    tokens.stallAfter(null)
    await sleep(20) // the upstream notices the hang-up

    heading('14. a form and a file upload: the documents upstream reports what it received')
    await send('POST', '/feedback', { rating: 5, tags: ['fast', 'clear'] })
    await send('POST', '/notes', { title: 'plan', text: '# Plan\n\n- ship 0.3\n' })

    heading('15. accounts wants a bearer token: auth.token() gets one before the first call; once it is revoked, two calls answered 401 share one refresh and are each sent once more')
    await send('GET', '/me')
    accounts.revokeTokens()
    await Promise.all([send('GET', '/me'), send('GET', '/me')])

    heading(`16. quotes answers 429 with Retry-After: 1: the client's rate limit (${QUOTES_PER_SECOND}/s) pauses for that second instead of opening the circuit, and calls made meanwhile wait their turn`)
    quotes.overQuotaNext(1)
    const overQuota = send('GET', '/quotes/ACME')
    await sleep(200)
    await Promise.all([send('GET', '/quotes/BOLT'), send('GET', '/quotes/CRUX'), overQuota])
    const limited = app.httpClients.quotes.stats()
    log('gateway', `quotes stats: circuit=${limited.circuit} retries=${limited.retries} rateLimitWaits=${limited.rateLimitWaits} rateLimited=${limited.rateLimited}`)

    heading('stats of the payments client')
    const { requests, successes, failures, retries, shortCircuited, circuit } = app.httpClients.payments.stats()
    log('gateway', JSON.stringify({ requests, successes, failures, retries, shortCircuited, circuit }))
  } finally {
    await agent.close()
    await app.close()
    await upstreams.close()
    stopWatching()
  }
}

/** `events 1, 2, 3` of a relayed stream, and the error event that ended it, if any. */
function describeEvents (text: string): string {
  const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((match) => match[1])
  const error = /^event: error\ndata: (.*)$/m.exec(text)?.[1]
  return `events ${ids.join(', ')}${error === undefined ? '' : `, then an error event ${error}`}`
}

function describe (payload: Record<string, unknown>): string {
  if (payload.contentType !== undefined) {
    const files = (payload.files as Array<{ name: string, type: string, bytes: number }>).map((file) => `, file ${file.name} (${file.type}, ${file.bytes} bytes)`).join('')
    return `received ${String(payload.contentType).replace(/;.*/, '')}: ${JSON.stringify(payload.fields)}${files}`
  }
  if (payload.user !== undefined) return `${payload.user} (${payload.plan}) in ${payload.attempts} attempt(s)`
  if (payload.symbol !== undefined) return `${payload.symbol} at ${payload.price} in ${payload.attempts} attempt(s)`
  if (payload.chargeId !== undefined) return `charged ${payload.product} (${payload.chargeId}) in ${payload.attempts} attempt(s)`
  if (payload.name !== undefined) return `${payload.name} in ${payload.attempts} attempt(s)`
  if (payload.code !== undefined) return `${payload.code} "${payload.error}"`
  return JSON.stringify(payload)
}

main().then(() => {
  console.log('\ndone: every server, pool and timer is closed, so the process exits by itself')
}, (error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
