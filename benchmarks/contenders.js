'use strict'

// One small function per contender. Each gets the upstream's origin and the
// pool settings shared by all, and returns { call, close, run?, stats? }:
// `call()` makes one GET and resolves with the parsed JSON body (rejects on a
// failed call); `run(fn)`, when present, runs the load loop inside a context
// (the request id of an inbound request); `stats()`, when present, returns
// counters that the measuring child reads at both ends of its window.

const http = require('node:http')
const { Pool, Agent, RetryAgent, fetch } = require('undici')

function pool (origin, { connections }) {
  return new Pool(origin, { connections, pipelining: 1 })
}

/** Pool.request, reading the body as the others do; 5xx counts as a failure for the breakers. */
async function poolGet (p) {
  const { statusCode, body } = await p.request({ method: 'GET', path: '/' })
  const value = await body.json()
  if (statusCode >= 500) throw new Error(`upstream answered ${statusCode}`)
  return value
}

/** Our client with retry and breaker at their defaults, plus `extra` options, calling `path`. */
function oursOn (origin, settings, path, extra = {}) {
  const { createHttpClient } = require('..')
  const client = createHttpClient({ name: 'upstream', baseUrl: origin, pool: { connections: settings.connections, pipelining: 1 }, ...extra })
  return {
    client,
    call: async () => (await client.get(path)).json(),
    close: () => client.close(),
    stats: () => {
      const { requests, retries, hedges, hedgeWins, successes, failures, overloaded } = client.stats()
      return { requests, retries, hedges, hedgeWins, successes, failures, overloaded }
    }
  }
}

/** Our client whose non-2xx answers count as failed calls: for goodput under overload. */
function oursStrict (origin, settings, path, extra) {
  const contender = oursOn(origin, settings, path, extra)
  contender.call = async () => {
    const res = await contender.client.get(path)
    const body = await res.json()
    if (!res.ok) throw new Error(`upstream answered ${res.statusCode}`)
    return body
  }
  return contender
}

/**
 * The OpenTelemetry metrics SDK set up the same way for both contenders (a
 * MeterProvider with a periodic reader into memory); only `register` makes it
 * the global provider, which is what turns the package's counter on. The
 * calls go to /flaky with retries every other call, so the counter has work.
 */
function oursWithMeter (origin, settings, register) {
  const { metrics } = require('@opentelemetry/api')
  const { MeterProvider, PeriodicExportingMetricReader, InMemoryMetricExporter, AggregationTemporality } = require('@opentelemetry/sdk-metrics')
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 1_000 })
  const provider = new MeterProvider({ readers: [reader] })
  if (register) metrics.setGlobalMeterProvider(provider)
  const contender = oursOn(origin, settings, '/flaky', FLAKY_RETRIES)
  const close = contender.close
  contender.close = async () => {
    await close()
    await provider.shutdown()
  }
  const stats = contender.stats
  contender.stats = async () => ({ ...stats(), counted: await counted(reader) })
  return contender
}

/** Retries of every 503 without waiting long, the breaker never opening: retry events on half the calls. */
const FLAKY_RETRIES = { retry: { budget: false, backoffInitialMs: 1, backoffMaxMs: 5 }, circuitBreaker: { failureThreshold: 1_000_000 } }

/** The events the counter holds so far (cumulative), collected from the reader. */
async function counted (reader) {
  const { resourceMetrics } = await reader.collect()
  let sum = 0
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      if (metric.descriptor.name !== 'http.client.resilience.events') continue
      for (const point of metric.dataPoints) sum += point.value
    }
  }
  return sum
}

/** Pool.dispatch with the least a handler can do: collect the chunks, parse them at the end. */
function dispatchGet (p, options) {
  return new Promise((resolve, reject) => {
    const chunks = []
    p.dispatch(options, {
      onRequestStart () {},
      onResponseStart () {},
      onResponseData (_controller, chunk) { chunks.push(chunk) },
      onResponseEnd () {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')))
        } catch (error) {
          reject(error)
        }
      },
      onResponseError (_controller, error) { reject(error) }
    })
  })
}

/**
 * The bodies phase: a Stripe-style form and a small multipart upload (a field
 * and a 4 KiB file), the same values for our client and for undici; each call
 * encodes its body again, as a service does with each request's data. undici's
 * own FormData on both sides: undici 7's request() refuses Node's global one.
 */
const FORM = { amount: 2000, currency: 'usd', description: 'Order 6735', 'metadata[order]': '6735', 'expand[]': ['customer', 'invoice'] }
function multipartForm () {
  const { FormData } = require('undici')
  const form = new FormData()
  form.append('title', 'Quarterly report')
  form.append('file', new File(['x'.repeat(4096)], 'report.txt', { type: 'text/plain' }))
  return form
}

/** FORM as undici's request() is given it: encoded by URLSearchParams, arrays repeating their key. */
function encodedForm () {
  const params = new URLSearchParams()
  for (const [key, value] of Object.entries(FORM)) {
    for (const item of Array.isArray(value) ? value : [value]) params.append(key, String(item))
  }
  return params.toString()
}

/** Pool.request with a body, reading the answer as JSON. */
async function poolPost (p, options) {
  const { statusCode, body } = await p.request(options)
  const value = await body.json()
  if (statusCode >= 500) throw new Error(`upstream answered ${statusCode}`)
  return value
}

const contenders = {
  async ours (origin, settings) {
    return oursOn(origin, settings, '/')
  },

  // The same as `ours`, measured as a separate contender: the spread between
  // the two is the noise of the run (an A/A control).
  async 'ours A/A' (origin, settings) {
    return oursOn(origin, settings, '/')
  },

  // The breaker's ratio and slow-call rules on: a window bucket per verdict, the clock read at headers.
  async 'ours + ratio rules' (origin, settings) {
    return oursOn(origin, settings, '/', { circuitBreaker: { failureRatio: 0.2, slowCallMs: 2_000 } })
  },

  async 'undici dispatch' (origin, settings) {
    const p = pool(origin, settings)
    const options = { method: 'GET', path: '/' }
    return { call: () => dispatchGet(p, options), close: () => p.close() }
  },

  // Heavy tail (GET /tail): 2 % of requests take 50-200 ms.
  async 'tail, no hedging' (origin, settings) {
    return oursOn(origin, settings, '/tail')
  },

  async 'tail, no hedging A/A' (origin, settings) {
    return oursOn(origin, settings, '/tail')
  },

  async 'tail, hedge auto' (origin, settings) {
    return oursOn(origin, settings, '/tail', { hedge: { delayMs: 'auto' } })
  },

  // Overload (GET /capacity): the breaker off in both, so that only the
  // concurrency limit differs (an open circuit would stop either for 30 s).
  async 'overload, unprotected' (origin, settings) {
    return oursStrict(origin, settings, '/capacity', { circuitBreaker: false })
  },

  async 'overload, adaptive' (origin, settings) {
    return oursStrict(origin, settings, '/capacity', { circuitBreaker: false, adaptiveConcurrency: true })
  },

  async 'otel counter on' (origin, settings) {
    return oursWithMeter(origin, settings, true)
  },

  async 'otel counter off' (origin, settings) {
    return oursWithMeter(origin, settings, false)
  },

  async 'otel counter off A/A' (origin, settings) {
    return oursWithMeter(origin, settings, false)
  },

  // Our client as the plugin runs it in a Fastify app: every call made while
  // serving an inbound request, with its request id forwarded upstream.
  async 'ours + request id' (origin, settings) {
    const Fastify = require('fastify')
    const resilientHttp = require('..')
    const { asyncLocalStorage } = require('@fastify/request-context')
    const app = Fastify({ genReqId: resilientHttp.requestIdGenerator() })
    await app.register(resilientHttp, {
      clients: { upstream: { baseUrl: origin, pool: { connections: settings.connections, pipelining: 1 } } }
    })
    // Keep the context of one real inbound request and make every call inside it.
    let store
    app.get('/inbound', async () => {
      store = asyncLocalStorage.getStore()
      return {}
    })
    await app.inject({ url: '/inbound', headers: { 'x-request-id': 'bench-request-1' } })
    if (store === undefined) throw new Error('no request context inside the handler')
    const client = app.httpClients.upstream
    return {
      call: async () => (await client.get('/')).json(),
      run: (fn) => asyncLocalStorage.run(store, fn),
      close: () => app.close()
    }
  },

  async undici (origin, settings) {
    const p = pool(origin, settings)
    return { call: () => poolGet(p), close: () => p.close() }
  },

  async 'ours form' (origin, settings) {
    const contender = oursOn(origin, settings, '/')
    contender.call = async () => (await contender.client.post('/', { form: FORM })).json()
    return contender
  },

  async 'undici form' (origin, settings) {
    const p = pool(origin, settings)
    const headers = { 'content-type': 'application/x-www-form-urlencoded' }
    return { call: () => poolPost(p, { method: 'POST', path: '/', headers, body: encodedForm() }), close: () => p.close() }
  },

  async 'ours multipart' (origin, settings) {
    const contender = oursOn(origin, settings, '/')
    const form = multipartForm()
    contender.call = async () => (await contender.client.post('/', { body: form })).json()
    return contender
  },

  async 'undici multipart' (origin, settings) {
    const p = pool(origin, settings)
    const form = multipartForm()
    return { call: () => poolPost(p, { method: 'POST', path: '/', body: form }), close: () => p.close() }
  },

  async 'undici RetryAgent' (origin, settings) {
    const p = pool(origin, settings)
    const agent = new RetryAgent(p)
    return {
      call: async () => {
        const { body } = await agent.request({ origin, method: 'GET', path: '/' })
        return body.json()
      },
      close: () => p.close()
    }
  },

  async 'undici fetch' (origin, settings) {
    const agent = new Agent({ connections: settings.connections, pipelining: 1 })
    const url = `${origin}/`
    return {
      call: async () => (await fetch(url, { dispatcher: agent })).json(),
      close: () => agent.close()
    }
  },

  async got (origin, settings) {
    const { default: got } = await import('got')
    const agent = new http.Agent({ keepAlive: true, maxSockets: settings.connections })
    const client = got.extend({ agent: { http: agent } })
    const url = `${origin}/`
    return {
      call: () => client.get(url).json(),
      close: async () => agent.destroy()
    }
  },

  async axios (origin, settings) {
    const axios = require('axios')
    const agent = new http.Agent({ keepAlive: true, maxSockets: settings.connections })
    const client = axios.create({ baseURL: origin, httpAgent: agent })
    return {
      call: async () => (await client.get('/')).data,
      close: async () => agent.destroy()
    }
  },

  // cockatiel's usual composition: retry around a consecutive-failure breaker.
  async cockatiel (origin, settings) {
    const { wrap, retry, circuitBreaker, handleAll, ExponentialBackoff, ConsecutiveBreaker } = require('cockatiel')
    const p = pool(origin, settings)
    const policy = wrap(
      retry(handleAll, { maxAttempts: 2, backoff: new ExponentialBackoff() }),
      circuitBreaker(handleAll, { halfOpenAfter: 30_000, breaker: new ConsecutiveBreaker(5) })
    )
    const request = () => poolGet(p)
    return { call: () => policy.execute(request), close: () => p.close() }
  },

  // opossum at its defaults (10 s timeout, 50 % error threshold, 30 s reset).
  async opossum (origin, settings) {
    const CircuitBreaker = require('opossum')
    const p = pool(origin, settings)
    const breaker = new CircuitBreaker(() => poolGet(p))
    return {
      call: () => breaker.fire(),
      close: async () => {
        breaker.shutdown()
        await p.close()
      }
    }
  }
}

module.exports = contenders
