'use strict'

// One small function per contender. Each gets the upstream's origin and the
// pool settings shared by all, and returns { call, close, run? }: `call()`
// makes one GET / and resolves with the parsed JSON body; `run(fn)`, when
// present, runs the load loop inside a context (the request id of an inbound
// request).

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

const contenders = {
  async ours (origin, settings) {
    const { createHttpClient } = require('..')
    const client = createHttpClient({ name: 'upstream', baseUrl: origin, pool: { connections: settings.connections, pipelining: 1 } })
    return {
      call: async () => (await client.get('/')).json(),
      close: () => client.close()
    }
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
