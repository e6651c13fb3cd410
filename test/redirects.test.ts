import { Readable } from 'node:stream'
import { test, type Test } from 'tap'
import { createHttpClient, type HttpClient, TimeoutError } from '../plugin'
import type { CreateHttpClientOptions } from '../lib/types'
import { dispatcherOption } from './helpers/dispatcher'
import { type Handler, type Hit, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'

/** Answers `/v1/from...` with `status` to `location`, and everything else with 200 and what it saw. */
function redirecting (status: number, location: string): Handler {
  return (_req, res, hit) => {
    if (hit.url.startsWith('/v1/from')) {
      res.writeHead(status, { location, 'content-type': 'text/plain' })
      res.end('moved, see the location')
      return
    }
    sendJson(res, 200, { method: hit.method, url: hit.url, body: hit.body })
  }
}

async function setup (t: Test, handler: Handler, options: Partial<CreateHttpClientOptions> = {}): Promise<{ upstream: Upstream, client: HttpClient }> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'svc', baseUrl: `${upstream.url}/v1`, retry: false, followRedirects: 3, ...dispatcherOption(), ...options })
  t.teardown(() => client.close())
  return { upstream, client }
}

function summary (hits: Hit[]): string[] {
  return hits.map((hit) => `${hit.method} ${hit.url} ${hit.headers['content-type'] ?? '-'} ${hit.body}`)
}

for (const status of [301, 302, 303, 307, 308]) {
  test(`a ${status} on the client's origin and base path is followed`, async (t) => {
    const { upstream, client } = await setup(t, redirecting(status, '/v1/to?x=1'))
    const res = await client.get('/from')
    t.equal(res.statusCode, 200)
    t.equal(res.redirects, 1)
    t.equal(res.path, '/to?x=1')
    t.equal(res.attempts, 1, 'a redirect is not an attempt')
    t.same(await res.json(), { method: 'GET', url: '/v1/to?x=1', body: '' })
    t.equal(client.stats().redirects, 1)
    t.equal(client.stats().requests, 1)
    t.equal(upstream.hits.length, 2)
  })
}

test('a POST answered 301, 302 or 303 becomes a GET without its body; 307 and 308 keep both', async (t) => {
  const expected: Record<number, string> = {
    301: 'GET /v1/to - ',
    302: 'GET /v1/to - ',
    303: 'GET /v1/to - ',
    307: 'POST /v1/to application/json {"amount":1}',
    308: 'POST /v1/to application/json {"amount":1}'
  }
  for (const status of [301, 302, 303, 307, 308]) {
    const { upstream, client } = await setup(t, redirecting(status, '/v1/to'))
    const res = await client.post('/from', { json: { amount: 1 } })
    t.equal(res.statusCode, 200, String(status))
    t.same(summary(upstream.hits), ['POST /v1/from application/json {"amount":1}', expected[status]], String(status))
  }
})

test('a PUT answered 301 keeps its method and body; a HEAD answered 303 stays a HEAD', async (t) => {
  const { upstream, client } = await setup(t, redirecting(301, '/v1/to'))
  await client.put('/from', { form: { a: 1 } })
  t.same(summary(upstream.hits), ['PUT /v1/from application/x-www-form-urlencoded a=1', 'PUT /v1/to application/x-www-form-urlencoded a=1'])
  const other = await setup(t, redirecting(303, '/v1/to'))
  const res = await other.client.head('/from')
  t.equal(res.statusCode, 200)
  t.same(other.upstream.hits.map((hit) => hit.method), ['HEAD', 'HEAD'])
})

test('a 307 with a stream body is not followed; a body function gives the redirect a fresh body', async (t) => {
  const { upstream, client } = await setup(t, redirecting(307, '/v1/to'))
  const res = await client.post('/from', { body: Readable.from([Buffer.from('once')]) })
  t.equal(res.statusCode, 307)
  t.equal(res.redirects, 0)
  t.equal(res.path, '/from')
  t.equal(await res.text(), 'moved, see the location', 'the 3xx is the answer, body and all')
  let made = 0
  const followed = await client.post('/from', { body: () => Readable.from([Buffer.from(`upload ${++made}`)]) })
  t.equal(followed.statusCode, 200)
  t.equal(made, 2)
  t.same(upstream.hits.map((hit) => hit.body), ['once', 'upload 1', 'upload 2'])
})

test('a Location that leaves the origin or the base path is not followed', async (t) => {
  const elsewhere = await startUpstream((_req, res) => sendJson(res, 200, { elsewhere: true }))
  t.teardown(() => elsewhere.close())
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    const location = new URL(hit.url, 'http://x').searchParams.get('to') as string
    res.writeHead(302, { location })
    res.end()
  })
  const origin = upstream.url
  const refused = [
    `${elsewhere.url}/v1/x`,
    `//127.0.0.1:${elsewhere.port}/v1/x`,
    `${origin.replace('127.0.0.1', 'localhost')}/v1/x`,
    `${origin.replace('http:', 'https:')}/v1/x`,
    `http://user:pw@127.0.0.1:${upstream.port}/v1/x`,
    '/other/x',
    '/v1extra/x',
    '/v1/../x',
    '/v1/a/%2e%2e/%2E%2E/x',
    '/v1/./x',
    '../x',
    './x',
    '/\\evil.example/x',
    '/v1\\x',
    '/v1/a b',
    'ftp://127.0.0.1/v1/x',
    'http://[::1/v1/x',
    `${origin}?x=1`,
    'javascript:alert(1)',
    ''
  ]
  for (const location of refused) {
    const res = await client.get('/from', { query: { to: location } })
    t.equal(res.statusCode, 302, location)
    t.equal(res.redirects, 0, location)
  }
  t.equal(elsewhere.hits.length, 0, 'nothing reached another origin')
  t.equal(upstream.hits.length, refused.length, 'and nothing more was sent here')
})

test('absolute, root-relative and relative Locations under the base path are followed', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    const location = new URL(hit.url, 'http://x').searchParams.get('to')
    if (location !== null) {
      res.writeHead(301, { location })
      res.end()
      return
    }
    sendJson(res, 200, { url: hit.url })
  })
  const cases: Array<[string, string, string]> = [
    [`${upstream.url}/v1/abs#frag`, '/v1/abs', '/abs'],
    [`${upstream.url.toUpperCase().replace('HTTP:', 'http:')}/V1/x`, '', ''],
    ['next?page=2', '/v1/items/next?page=2', '/items/next?page=2'],
    ['?page=3', '/v1/items/from?page=3', '/items/from?page=3'],
    ['/v1', '/v1', '/'],
    ['/v1?q=1', '/v1?q=1', '/?q=1'],
    ['/v1/caf\u00e9', '/v1/caf%C3%A9', '/caf%C3%A9']
  ]
  for (const [location, sent, path] of cases) {
    const res = await client.get('/items/from', { query: { to: location } })
    if (sent === '') {
      // An upper-case host is the same origin, but /V1 is not the base path /v1.
      t.equal(res.statusCode, 301, location)
      continue
    }
    t.equal(res.statusCode, 200, location)
    t.same(await res.json(), { url: sent }, location)
    t.equal(res.path, path, location)
  }
})

test('followRedirects counts hops: the call resolves with the 3xx once they are used up; a call may set its own', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    const hop = Number(hit.url.slice('/v1/hop/'.length))
    if (hop < 3) {
      res.writeHead(302, { location: `/v1/hop/${hop + 1}` })
      res.end()
      return
    }
    sendJson(res, 200, { hop })
  }, { followRedirects: 2 })
  const short = await client.get('/hop/0')
  t.equal(short.statusCode, 302)
  t.equal(short.redirects, 2)
  t.equal(short.path, '/hop/2')
  t.equal(short.headers.location, '/v1/hop/3')
  const long = await client.get('/hop/0', { followRedirects: 3 })
  t.equal(long.statusCode, 200)
  t.equal(long.redirects, 3)
  const none = await client.get('/hop/0', { followRedirects: 0 })
  t.equal(none.statusCode, 302)
  t.equal(none.redirects, 0)
  t.equal(client.stats().redirects, 5)
  t.equal(upstream.hits.length, 3 + 4 + 1)
  t.equal(upstream.connections(), 1, 'each redirect\'s body was drained: one connection served every hop')
})

test('a client follows no redirect by default', async (t) => {
  const { client } = await setup(t, redirecting(302, '/v1/to'), { followRedirects: undefined })
  const res = await client.get('/from')
  t.equal(res.statusCode, 302)
  t.equal(res.redirects, 0)
  t.equal(client.stats().redirects, 0)
})

test('a redirect uses no attempt and no retry budget', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, hit, index) => {
    if (hit.url.startsWith('/v1/hop/')) {
      const hop = Number(hit.url.slice('/v1/hop/'.length))
      res.writeHead(307, { location: hop < 2 ? `/v1/hop/${hop + 1}` : '/v1/flaky' })
      res.end()
      return
    }
    if (index === 3) sendJson(res, 503, { busy: true })
    else sendJson(res, 200, { ok: true })
  }, { retry: { maxAttempts: 2, backoffInitialMs: 1, backoffMaxMs: 1, budget: { ratio: 0, minPerSecond: 0.1 } } })
  const res = await client.get('/hop/0')
  t.equal(res.statusCode, 200)
  t.equal(res.redirects, 3)
  t.equal(res.attempts, 2, 'three redirects and the retry of the 503: two attempts')
  t.same(upstream.hits.map((hit) => hit.url), ['/v1/hop/0', '/v1/hop/1', '/v1/hop/2', '/v1/flaky', '/v1/flaky'])
  t.equal(client.stats().retries, 1)
})

test('each hop is bounded by timeout, all of them by totalTimeout', async (t) => {
  const { client } = await setup(t, (_req, res, hit) => {
    const hop = Number(hit.url.slice('/v1/hop/'.length))
    setTimeout(() => {
      res.writeHead(302, { location: `/v1/hop/${hop + 1}` })
      res.end()
    }, hop === 2 ? 5_000 : 150).unref()
  }, { followRedirects: 10 })
  const slowHop = await rejection(client.get('/hop/0', { timeout: 1_000, totalTimeout: 10_000 })) as TimeoutError
  t.type(slowHop, TimeoutError)
  t.equal(slowHop.kind, 'attempt', 'the third hop ran out of its own timeout')
  const total = await rejection(client.get('/hop/0', { timeout: 1_000, totalTimeout: 250 })) as TimeoutError
  t.type(total, TimeoutError)
  t.equal(total.kind, 'total', 'hops of 150 ms each run out the total of 250 ms')
})

test('with replicas, a Location on the answering replica\'s own origin is followed', async (t) => {
  const replicas: Upstream[] = []
  for (let i = 0; i < 2; i++) {
    const upstream = await startUpstream((_req, res, hit) => {
      if (hit.url === '/v1/from') {
        res.writeHead(301, { location: `${upstream.url}/v1/to` })
        res.end()
        return
      }
      sendJson(res, 200, { replica: i })
    })
    replicas.push(upstream)
    t.teardown(() => upstream.close())
  }
  const client = createHttpClient({ name: 'svc', baseUrl: replicas.map((upstream) => `${upstream.url}/v1`), followRedirects: 1, ...dispatcherOption() })
  t.teardown(() => client.close())
  for (let i = 0; i < 4; i++) {
    const res = await client.get('/from')
    t.equal(res.statusCode, 200)
    t.equal(res.redirects, 1)
  }
})

test('several Location headers are not followed; a client without a base path follows any path on its origin', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => {
    if (hit.url === '/two') {
      res.setHeader('location', ['/a', '/b'])
      res.statusCode = 302
      res.end()
    } else if (hit.url === '/from') {
      res.writeHead(308, { location: '/deep/to' })
      res.end()
    } else {
      sendJson(res, 200, { url: hit.url })
    }
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'svc', baseUrl: upstream.url, followRedirects: 1, circuitBreaker: false, ...dispatcherOption() })
  t.teardown(() => client.close())
  t.equal((await client.get('/two')).statusCode, 302)
  const res = await client.get('/from')
  t.same(await res.json(), { url: '/deep/to' })
  t.equal(res.path, '/deep/to')
})

test('a hedge still out when a redirect is followed is cancelled', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, hit, index) => {
    if (hit.url === '/v1/from') {
      setTimeout(() => {
        res.writeHead(302, { location: '/v1/to' })
        res.end()
      }, index === 0 ? 2_000 : 0).unref()
      return
    }
    sendJson(res, 200, { url: hit.url })
  }, { hedge: { delayMs: 50 } })
  const res = await client.get('/from')
  t.same(await res.json(), { url: '/v1/to' })
  t.equal(res.redirects, 1)
  t.equal(res.attempts, 2, 'the first try and its hedge')
  t.equal(client.stats().hedgeWins, 0)
  t.equal(client.stats().inFlight, 0)
  t.same(upstream.hits.map((hit) => hit.url), ['/v1/from', '/v1/from', '/v1/to'])
})

test('a redirect answered while the circuit is open is not followed', async (t) => {
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    if (hit.url === '/v1/fail') {
      sendJson(res, 500, {})
      return
    }
    setTimeout(() => {
      res.writeHead(302, { location: '/v1/to' })
      res.end()
    }, 300).unref()
  }, { circuitBreaker: { failureThreshold: 1 } })
  const redirected = client.get('/from')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal((await client.get('/fail')).statusCode, 500)
  t.equal(client.stats().circuit, 'open')
  const res = await redirected
  t.equal(res.statusCode, 302)
  t.equal(res.redirects, 0)
  t.same(upstream.hits.map((hit) => hit.url), ['/v1/from', '/v1/fail'])
})

test('under a rate limit, a redirect is followed only with a token there at once', async (t) => {
  const { upstream, client } = await setup(t, redirecting(302, '/v1/to'), { rateLimit: { perSecond: 1, burst: 1 } })
  const res = await client.get('/from')
  t.equal(res.statusCode, 302, 'the one token went to the call itself')
  t.equal(res.redirects, 0)
  t.equal(upstream.hits.length, 1)
})
