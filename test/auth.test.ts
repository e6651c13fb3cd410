import { Readable } from 'node:stream'
import { inspect } from 'node:util'
import { test, type Test } from 'tap'
import { AuthenticationError, ClientClosedError, createHttpClient, type HttpClient, InvalidOptionsError } from '../plugin'
import type { CreateHttpClientOptions } from '../lib/types'
import { dispatcherOption } from './helpers/dispatcher'
import { type Handler, sendJson, startUpstream, type Upstream, rejection } from './helpers/upstream'

/** Answers 200 to `authorization: Bearer <valid>`, 401 to anything else. */
function guarded (valid: () => string): Handler {
  return (_req, res, hit) => {
    if (hit.headers.authorization === `Bearer ${valid()}`) sendJson(res, 200, { ok: true })
    else sendJson(res, 401, { error: 'invalid token' })
  }
}

async function setup (t: Test, handler: Handler, options: Partial<CreateHttpClientOptions> = {}): Promise<{ upstream: Upstream, client: HttpClient }> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'api', baseUrl: upstream.url, retry: false, ...dispatcherOption(), ...options })
  t.teardown(() => client.close())
  return { upstream, client }
}

function echo (_req: unknown, res: Parameters<Handler>[1], hit: { headers: Record<string, unknown> }): void {
  sendJson(res, 200, { authorization: hit.headers.authorization ?? null })
}

test('{ bearer } and { username, password } set authorization; a call\'s own header wins', async (t) => {
  const bearer = await setup(t, echo, { auth: { bearer: 'sk_live_123' } })
  t.same(await (await bearer.client.get('/a')).json(), { authorization: 'Bearer sk_live_123' })
  t.same(await (await bearer.client.post('/a', { json: {} })).json(), { authorization: 'Bearer sk_live_123' })
  t.same(await (await bearer.client.get('/a', { headers: { Authorization: 'Bearer other' } })).json(), { authorization: 'Bearer other' })

  const basic = await setup(t, echo, { auth: { username: 'ana', password: 'pässwörd:✓' } })
  const { authorization } = await (await basic.client.get('/a')).json<{ authorization: string }>()
  t.equal(authorization, `Basic ${Buffer.from('ana:pässwörd:✓', 'utf8').toString('base64')}`)
  t.equal(Buffer.from(authorization.slice('Basic '.length), 'base64').toString('utf8'), 'ana:pässwörd:✓', 'UTF-8')
})

test('auth is redacted where defaultHeaders are: inspect, JSON and logs', async (t) => {
  const lines: string[] = []
  const logger = {
    info: (...args: unknown[]) => { lines.push(JSON.stringify(args)) },
    warn: (...args: unknown[]) => { lines.push(JSON.stringify(args)) },
    error: (...args: unknown[]) => { lines.push(JSON.stringify(args)) },
    debug: () => {},
    trace: () => {},
    fatal: () => {},
    child: () => logger,
    level: 'info'
  }
  const upstream = await startUpstream((_req, res) => sendJson(res, 503, {}))
  t.teardown(() => upstream.close())
  for (const auth of [{ bearer: 'sk_secret_1' }, { username: 'ana', password: 'sk_secret_2' }, { token: () => 'sk_secret_3' }]) {
    const client = createHttpClient({ name: 'api', baseUrl: upstream.url, auth, logger, retry: { backoffInitialMs: 1, backoffMaxMs: 1 }, ...dispatcherOption() })
    t.teardown(() => client.close())
    await client.get('/x')
    const shown = [inspect(client, { depth: 10 }), JSON.stringify(client), ...lines].join('\n')
    t.notMatch(shown, /sk_secret|YW5hOnNrX3NlY3JldF8y/, Object.keys(auth).join())
    t.match(JSON.stringify(client), /"auth":"\[redacted\]"/)
  }
  t.ok(lines.length > 0, 'the retries were logged')
})

test('a token function is called once before the first calls, and they all carry its token', async (t) => {
  let calls = 0
  const { upstream, client } = await setup(t, echo, {
    auth: {
      token: async () => {
        calls++
        await new Promise((resolve) => setTimeout(resolve, 20))
        return `token-${calls}`
      }
    }
  })
  const responses = await Promise.all(Array.from({ length: 5 }, () => client.get('/a')))
  t.equal(calls, 1)
  for (const res of responses) t.same(await res.json(), { authorization: 'Bearer token-1' })
  await client.get('/b')
  t.equal(calls, 1, 'kept until a 401')
  t.equal(upstream.hits.length, 6)
})

test('calls that get a 401 from one token share one refresh, and each is sent once more (not a retry)', async (t) => {
  let valid = 'token-1'
  let calls = 0
  const { upstream, client } = await setup(t, guarded(() => valid), {
    auth: {
      token: async () => {
        calls++
        await new Promise((resolve) => setTimeout(resolve, 20))
        return `token-${calls}`
      }
    }
  })
  t.equal((await client.get('/warm')).statusCode, 200)
  valid = 'token-2'
  // POSTs without an idempotency key, on a client without retries: the resend needs neither.
  const responses = await Promise.all(Array.from({ length: 6 }, (_, i) => client.post(`/charge/${i}`, { json: { i } })))
  t.equal(calls, 2, 'one refresh for all six')
  for (const res of responses) {
    t.equal(res.statusCode, 200)
    t.equal(res.attempts, 1, 'the resend is not an attempt')
  }
  const sent = upstream.hits.slice(1)
  t.equal(sent.filter((hit) => hit.headers.authorization === 'Bearer token-1').length, 6)
  t.equal(sent.filter((hit) => hit.headers.authorization === 'Bearer token-2').length, 6)
  t.ok(sent.every((hit) => hit.body.startsWith('{"i":')), 'each resend carries its body')
  t.equal(client.stats().retries, 0)
  t.equal(client.stats().requests, 7)
})

test('a 401 that comes after the refresh it would have asked for takes the new token', async (t) => {
  let valid = 'token-1'
  let calls = 0
  const { upstream, client } = await setup(t, (req, res, hit) => {
    const slow = hit.url === '/slow' && hit.headers.authorization === 'Bearer token-1'
    setTimeout(() => guarded(() => valid)(req, res, hit, 0), slow ? 300 : 0).unref()
  }, { auth: { token: () => `token-${++calls}` } })
  t.equal((await client.get('/warm')).statusCode, 200)
  valid = 'token-2'
  const slow = client.get('/slow')
  t.equal((await client.get('/fast')).statusCode, 200)
  t.equal(calls, 2)
  t.equal((await slow).statusCode, 200)
  t.equal(calls, 2, 'the late 401 took the token already refreshed')
  t.same(upstream.hits.map((hit) => `${hit.url} ${hit.headers.authorization}`), [
    '/warm Bearer token-1', '/slow Bearer token-1', '/fast Bearer token-1', '/fast Bearer token-2', '/slow Bearer token-2'
  ])
})

test('a resend that finds the circuit open is not made: the 401 is the answer', async (t) => {
  let calls = 0
  const { upstream, client } = await setup(t, (req, res, hit) => {
    if (hit.url === '/fail') sendJson(res, 500, {})
    else guarded(() => 'token-2')(req, res, hit, 0)
  }, {
    circuitBreaker: { failureThreshold: 1 },
    auth: {
      token: async () => {
        if (++calls === 2) await new Promise((resolve) => setTimeout(resolve, 300))
        return `token-${calls}`
      }
    }
  })
  const refused = client.get('/a')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(calls, 2, 'the refresh is under way')
  // Its own authorization: it does not wait for the refresh as the client's other calls would.
  t.equal((await client.get('/fail', { headers: { authorization: 'Bearer own' } })).statusCode, 500)
  const res = await refused
  t.equal(res.statusCode, 401)
  t.same(upstream.hits.map((hit) => hit.url), ['/a', '/fail'])
})

test('a second 401 resolves as it is; a stream body is not sent again', async (t) => {
  let calls = 0
  const { upstream, client } = await setup(t, guarded(() => 'never'), { auth: { token: () => `token-${++calls}` } })
  const res = await client.get('/a')
  t.equal(res.statusCode, 401)
  t.same(await res.json(), { error: 'invalid token' })
  t.equal(calls, 2)
  t.same(upstream.hits.map((hit) => hit.headers.authorization), ['Bearer token-1', 'Bearer token-2'])

  const streamed = await client.put('/upload', { body: Readable.from([Buffer.from('once')]) })
  t.equal(streamed.statusCode, 401)
  t.equal(upstream.hits.length, 3, 'the stream went once')
  t.equal(calls, 2, 'no refresh for a call that cannot be sent again')

  let made = 0
  const fresh = await client.put('/upload', { body: () => `body ${++made}` })
  t.equal(fresh.statusCode, 401)
  t.equal(made, 2, 'a body function makes the resend\'s body')
  t.same(upstream.hits.slice(3).map((hit) => hit.body), ['body 1', 'body 2'])
})

test('a call with its own authorization never asks the token function', async (t) => {
  let calls = 0
  const { upstream, client } = await setup(t, guarded(() => 'mine'), { auth: { token: () => { calls++; throw new Error('not needed') } } })
  const res = await client.get('/a', { headers: { authorization: 'Bearer mine' } })
  t.equal(res.statusCode, 200)
  const refused = await client.get('/a', { headers: { authorization: 'Bearer wrong' } })
  t.equal(refused.statusCode, 401, 'its 401 is its own')
  t.equal(calls, 0)
  t.equal(upstream.hits.length, 2)
})

test('a token function that throws, rejects or returns no token fails the call with AuthenticationError; nothing is sent', async (t) => {
  const boom = new Error('vault unreachable')
  const outcomes: Array<() => string | Promise<string>> = [
    () => { throw boom },
    async () => { throw boom },
    () => '' as string,
    () => 42 as unknown as string,
    () => 'a\r\nb'
  ]
  let next = 0
  const { upstream, client } = await setup(t, guarded(() => 'good'), { auth: { token: () => next < outcomes.length ? outcomes[next++]() : 'good' } })
  for (let i = 0; i < outcomes.length; i++) {
    const error = await rejection(client.post('/charge', { json: {} })) as AuthenticationError
    t.type(error, AuthenticationError)
    t.equal(error.code, 'FRH_AUTHENTICATION')
    t.equal(error.statusCode, 502)
    t.equal(error.clientName, 'api')
    t.equal(error.path, '/charge')
    if (i < 2) t.equal(error.cause, boom)
    else t.type(error.cause, TypeError)
    t.notMatch(error.message, /vault/, 'the cause stays on cause')
  }
  t.equal(upstream.hits.length, 0)
  t.equal((await client.get('/a')).statusCode, 200, 'the next call asks again')
  t.equal(client.stats().inFlight, 0)
})

test('a refresh that fails fails the calls that waited for it with AuthenticationError', async (t) => {
  let valid = 'token-1'
  let calls = 0
  const refused = new Error('refresh refused')
  const { upstream, client } = await setup(t, guarded(() => valid), {
    auth: {
      token: async () => {
        // Slow enough that both 401s arrive while the refresh is under way.
        if (++calls === 2) await new Promise((resolve) => setTimeout(resolve, 200))
        if (calls === 2) throw refused
        return `token-${calls}`
      }
    }
  })
  t.equal((await client.get('/a')).statusCode, 200)
  valid = 'token-3'
  const errors = await Promise.all([rejection(client.get('/a')), rejection(client.post('/b', { form: { a: 1 } }))])
  for (const error of errors) {
    t.type(error, AuthenticationError)
    t.equal((error as AuthenticationError).cause, refused)
  }
  t.equal(calls, 2)
  t.equal(upstream.hits.length, 3)
  t.equal((await client.get('/a')).statusCode, 200, 'the next call asks again')
  t.equal(calls, 3)
  t.equal(client.stats().inFlight, 0)
})

test('close cuts a call waiting for a refresh', async (t) => {
  let release: (token: string) => void = () => {}
  let calls = 0
  const { client } = await setup(t, guarded(() => 'token-2'), {
    auth: {
      token: () => {
        calls++
        if (calls === 1) return 'token-1'
        return new Promise<string>((resolve) => { release = resolve })
      }
    }
  })
  const pending = rejection(client.get('/a'))
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(calls, 2, 'the 401 asked for a new token')
  await client.close()
  t.type(await pending, ClientClosedError)
  release('token-2')
})

test('auth options are validated with their dotted path', async (t) => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ bearer: '' }, 'auth.bearer', /must not be empty/],
    [{ bearer: 1 }, 'auth.bearer', /must be a string/],
    [{ bearer: 'a\nb' }, 'auth.bearer', /CR, LF or NUL/],
    [{ username: 'a:b', password: 'p' }, 'auth.username', /must not contain ":"/],
    [{ username: 'a', password: undefined }, 'auth.password', /must be a string/],
    [{ username: 'a' }, 'auth', /one of \{ bearer \}/],
    [{ token: 'abc' }, 'auth.token', /must be a function/],
    [{ bearer: 'a', token: () => 'b' }, 'auth', /one of/],
    ['token', 'auth', /must be one of/],
    [{}, 'auth', /one of/]
  ]
  for (const [auth, option, message] of cases) {
    const error = await rejection(Promise.resolve().then(() => createHttpClient({ name: 'api', baseUrl: 'http://127.0.0.1:1', auth: auth as never }))) as InvalidOptionsError
    t.type(error, InvalidOptionsError, option)
    t.equal(error.option, option, JSON.stringify(auth))
    t.match(error.message, message)
  }
  const both = await rejection(Promise.resolve().then(() => createHttpClient({ name: 'api', baseUrl: 'http://127.0.0.1:1', auth: { bearer: 'a' }, defaultHeaders: { Authorization: 'Bearer b' } }))) as InvalidOptionsError
  t.equal(both.option, 'auth')
  for (const [value, message] of [[-1, /between 0 and 20/], [21, /between 0 and 20/], [1.5, /integer/], [true, /integer/]] as const) {
    const error = await rejection(Promise.resolve().then(() => createHttpClient({ name: 'api', baseUrl: 'http://127.0.0.1:1', followRedirects: value as number }))) as InvalidOptionsError
    t.equal(error.option, 'followRedirects')
    t.match(error.message, message)
  }
})

test('a call waiting for the first token is refused once the client has closed', async (t) => {
  let release: (token: string) => void = () => {}
  const { upstream, client } = await setup(t, echo, { auth: { token: () => new Promise<string>((resolve) => { release = resolve }) } })
  const pending = rejection(client.get('/a'))
  await client.close()
  release('late')
  t.type(await pending, ClientClosedError)
  t.equal(upstream.hits.length, 0)
})

test('a stream is opened with the token too, and resent once after a 401 with a new one', async (t) => {
  let valid = 'token-1'
  let calls = 0
  const { upstream, client } = await setup(t, (_req, res, hit) => {
    if (hit.headers.authorization !== `Bearer ${valid}`) {
      sendJson(res, 401, { error: 'invalid token' })
      return
    }
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end('one\ntwo\n')
  }, { auth: { token: async () => `token-${++calls}` } })
  const lines: string[] = []
  for await (const line of (await client.stream('/feed')).lines()) lines.push(line)
  t.same(lines, ['one', 'two'])
  valid = 'token-2'
  const again: string[] = []
  for await (const line of (await client.stream('/feed')).lines()) again.push(line)
  t.same(again, ['one', 'two'])
  t.equal(calls, 2)
  t.same(upstream.hits.map((hit) => hit.headers.authorization), ['Bearer token-1', 'Bearer token-1', 'Bearer token-2'])
  const failing = createHttpClient({ name: 'api', baseUrl: upstream.url, auth: { token: () => { throw new Error('no vault') } }, ...dispatcherOption() })
  t.teardown(() => failing.close())
  t.type(await rejection(failing.stream('/feed')), AuthenticationError)
  const closing = createHttpClient({ name: 'api', baseUrl: upstream.url, auth: { token: () => new Promise<string>((resolve) => setTimeout(resolve, 50, 'late')) }, ...dispatcherOption() })
  const pending = rejection(closing.stream('/feed'))
  await closing.close()
  t.type(await pending, ClientClosedError)
  t.equal(upstream.hits.length, 3)
})
