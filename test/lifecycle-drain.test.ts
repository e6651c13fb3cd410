import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import resilientHttp, { ClientClosedError, requestIdGenerator } from '../plugin'
import type { ClientOptions } from '../lib/types'
import './helpers/fastify-types'
import { rejection, sendJson, upstreamFor } from './helpers/upstream'
import { eventually } from './helpers/wait'

// Wall-clock bounds are deliberately loose: the machine running the suite may be busy.
const SLACK_MS = 1_500

interface LogLine {
  raw: string
  msg: string
  reqId?: string
  client?: string
  skipped?: string
  time: number
}

/** Pino's output as parsed JSON lines, each with its raw text. */
function logCapture (): { stream: Writable, lines: LogLine[] } {
  const lines: LogLine[] = []
  let pending = ''
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      pending += chunk.toString()
      let newline = pending.indexOf('\n')
      while (newline !== -1) {
        const raw = pending.slice(0, newline)
        pending = pending.slice(newline + 1)
        if (raw !== '') lines.push({ raw, ...(JSON.parse(raw) as Omit<LogLine, 'raw'>) })
        newline = pending.indexOf('\n')
      }
      callback()
    }
  })
  return { stream, lines }
}

interface Served {
  app: FastifyInstance
  url: string
  lines: LogLine[]
  /** Sends one inbound request over a real socket; resolves with its status and JSON body. */
  send(path: string, headers?: Record<string, string>): Promise<{ status: number, body: Record<string, unknown> }>
}

/** A listening app with one client `up` and the routes `routes` adds, logging JSON lines into `lines`. */
async function serve (t: Test, client: ClientOptions, routes: (app: FastifyInstance) => void): Promise<Served> {
  const { stream, lines } = logCapture()
  const app = Fastify({ genReqId: requestIdGenerator(), logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: client } })
  routes(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const agent = new Agent()
  t.teardown(() => agent.close())
  return {
    app,
    url,
    lines,
    async send (path, headers = {}) {
      // `reset`: the socket closes after the reply, or Fastify's close would wait out its 72 s keep-alive.
      const response = await undiciRequest(`${url}${path}`, { dispatcher: agent, headers, reset: true })
      return { status: response.statusCode, body: await response.body.json() as Record<string, unknown> }
    }
  }
}

const retrying = (line: LogLine): boolean => line.msg.startsWith('retrying ')

test('close with an upstream answering after 5 s ends within one timeout of 3 s: no retry, the request answered', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 200, {}), 5_000).unref() })
  const s = await serve(t, { baseUrl: upstream.url, timeout: 3_000, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false } }, (app) => {
    app.get('/slow', async () => {
      const response = await app.httpClients.up.get('/slow')
      return { status: response.statusCode }
    })
  })
  const inbound = s.send('/slow')
  t.ok(await eventually(() => upstream.hits.length === 1, 3_000), 'the call is in flight')
  const closeStarted = performance.now()
  await s.app.close()
  const closeMs = performance.now() - closeStarted
  const reply = await inbound
  t.ok(closeMs < 3_000 + SLACK_MS && closeMs < 4_800, `close took ${Math.round(closeMs)} ms: bounded by the attempt timeout, not the upstream`)
  t.equal(reply.status, 504, 'the attempt timed out and was not retried: a TimeoutError answered as 504')
  t.equal(upstream.hits.length, 1, 'nothing was sent again')
  t.equal(s.lines.filter(retrying).length, 0, 'no retry logged')
  t.equal(s.lines.filter((line) => line.skipped === 'closing').length, 1, 'the retry not made is logged as closing')
})

test('a call Fastify does not wait for (outside a request) gets one client timeout of grace, then is cut with ClientClosedError', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 200, {}), 5_000).unref() })
  const s = await serve(t, { baseUrl: upstream.url, timeout: 3_000, totalTimeout: 30_000, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false } }, () => {})
  // Its own attempt timeout is longer than the grace: what ends it is close.
  const call = rejection(s.app.httpClients.up.get('/slow', { timeout: 20_000 }))
  t.ok(await eventually(() => upstream.hits.length === 1, 3_000), 'the call is in flight')
  const closeStarted = performance.now()
  await s.app.close()
  const closeMs = performance.now() - closeStarted
  const error = await call
  t.ok(error instanceof ClientClosedError, 'cut by close')
  t.ok(closeMs >= 2_900 && closeMs < 3_000 + SLACK_MS, `close took ${Math.round(closeMs)} ms: the grace of one client timeout`)
  t.equal(upstream.hits.length, 1, 'not sent again')
  t.equal(s.app.httpClients.up.stats().inFlight, 0)
  t.match(s.app.httpClients.up.stats().pool, { connected: 0, running: 0 })
})

test('a wait between attempts is cut by close with ClientClosedError, and close does not wait for it', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { sendJson(res, 503, {}) })
  const s = await serve(t, { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 10_000, jitter: 'none', budget: false }, circuitBreaker: false }, (app) => {
    app.get('/waits', async () => app.httpClients.up.get('/x'))
  })
  const inbound = s.send('/waits')
  t.ok(await eventually(() => s.lines.some(retrying), 3_000), 'the call is waiting 10 s to retry')
  const closeStarted = performance.now()
  await s.app.close()
  const closeMs = performance.now() - closeStarted
  const reply = await inbound
  t.ok(closeMs < SLACK_MS, `close did not wait for the 10 s wait: ${Math.round(closeMs)} ms`)
  t.equal(reply.status, 503)
  t.equal(reply.body.code, 'FRH_CLIENT_CLOSED', 'the route failed with ClientClosedError')
  t.equal(upstream.hits.length, 1)
})

test('after close began no retry is sent or logged: a 503 arriving then ends its call', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { setTimeout(() => sendJson(res, 503, {}), 300) })
  const s = await serve(t, { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false }, circuitBreaker: false }, (app) => {
    app.get('/r', async () => {
      const response = await app.httpClients.up.get('/x')
      return { status: response.statusCode, attempts: response.attempts }
    })
  })
  const inbound = s.send('/r')
  t.ok(await eventually(() => upstream.hits.length === 1, 3_000))
  const closing = s.app.close()
  const reply = await inbound
  await closing
  t.same(reply.body, { status: 503, attempts: 1 }, 'the call ended with the 503, once')
  await sleep(50)
  t.equal(upstream.hits.length, 1, 'no retry was sent')
  t.equal(s.lines.filter(retrying).length, 0, 'no retry was logged')
  t.match(s.lines.filter((line) => line.skipped !== undefined), [{ skipped: 'closing', client: 'up' }])
})

test('a call made by a request still being served during close is sent once, without retries', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { sendJson(res, 503, {}) })
  let closeBegan = false
  const s = await serve(t, { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false }, circuitBreaker: false }, (app) => {
    app.get('/late-call', async () => {
      // The request is already being served; its call comes once close has begun.
      if (!await eventually(() => closeBegan, 3_000)) throw new Error('close never began')
      await sleep(20)
      const response = await app.httpClients.up.get('/x')
      return { status: response.statusCode, attempts: response.attempts }
    })
  })
  const inbound = s.send('/late-call')
  await sleep(100)
  const closing = s.app.close()
  closeBegan = true
  const reply = await inbound
  await closing
  t.equal(reply.status, 200)
  t.same(reply.body, { status: 503, attempts: 1 }, 'sent, and not retried')
  t.equal(upstream.hits.length, 1)
  t.equal(s.lines.filter(retrying).length, 0)
})

test('retry log lines made while serving a request carry its reqId and the client name, each once', async (t) => {
  const upstream = await upstreamFor(t, (_req, res, _hit, index) => { sendJson(res, index % 2 === 0 ? 503 : 200, {}) })
  const s = await serve(t, { baseUrl: upstream.url, retry: { maxAttempts: 3, backoffInitialMs: 1, budget: false }, circuitBreaker: false }, (app) => {
    app.get('/r', async () => {
      const response = await app.httpClients.up.get('/x')
      return { status: response.statusCode, attempts: response.attempts }
    })
  })
  const reply = await s.send('/r', { 'x-request-id': 'log-req-1' })
  t.same(reply.body, { status: 200, attempts: 2 })
  const inRequest = s.lines.filter(retrying)
  t.equal(inRequest.length, 1)
  t.equal(inRequest[0].reqId, 'log-req-1', 'the request\'s reqId')
  t.equal(inRequest[0].client, 'up')
  t.equal(inRequest[0].raw.split('"reqId":').length - 1, 1, 'reqId appears once in the line')
  t.equal(inRequest[0].raw.split('"client":').length - 1, 1, 'client appears once in the line')

  // Outside a request: the app's logger, with the client's name once and no reqId.
  const response = await s.app.httpClients.up.get('/x')
  t.equal(response.statusCode, 200)
  const outside = s.lines.filter(retrying)[1]
  t.equal(outside.reqId, undefined)
  t.equal(outside.raw.split('"client":').length - 1, 1)
  t.equal(outside.client, 'up')
})
