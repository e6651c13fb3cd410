import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { AddressInfo } from 'node:net'
import { test, type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import resilientHttp, { InvalidOptionsError, isValidRequestId, requestIdGenerator } from '../plugin'
import type { PluginOptions } from '../lib/types'
import './helpers/fastify-types'
import { type Hit, sendJson, startUpstream, type Upstream } from './helpers/upstream'

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

// Every visible ASCII character, cycled up to `length`.
function visibleId (length: number): string {
  let id = ''
  for (let i = 0; i < length; i++) id += String.fromCharCode(0x21 + (i % 94))
  return id
}

interface LogLine {
  level: number
  reqId?: string
  msg?: string
  marker?: string
  req?: { url?: string }
}

interface Setup {
  app: FastifyInstance
  upstream: Upstream
  base: string
  logs: LogLine[]
  rawLogs: string[]
  /** A real HTTP request to the app; resolves with the reply's status, headers and JSON body. */
  send (path: string, headers?: Record<string, string | string[]>): Promise<{ statusCode: number, headers: Record<string, string | string[] | undefined>, body: Record<string, unknown> }>
  /** The upstream hits whose query carries `marker`. */
  hitsFor (marker: string): Hit[]
}

/**
 * A Fastify app with the plugin and a real upstream, listening on 127.0.0.1,
 * logging into memory. `GET /call?marker=` logs a line, calls the upstream
 * through each client named in `?via=` (default `up`) and answers with the
 * request id it saw; `GET /boom` fails.
 */
async function setup (t: Test, fastifyOptions: FastifyServerOptions, pluginOptions: Omit<Partial<PluginOptions>, 'clients'> = {}, extraClients: (url: string) => PluginOptions['clients'] = () => ({})): Promise<Setup> {
  const upstream = await startUpstream((_req, res) => sendJson(res, 200, { ok: true }))
  t.teardown(() => upstream.close())
  const rawLogs: string[] = []
  const logs: LogLine[] = []
  const app = Fastify({
    ...fastifyOptions,
    logger: {
      level: 'info',
      stream: {
        write (line: string) {
          rawLogs.push(line)
          logs.push(JSON.parse(line) as LogLine)
        }
      }
    }
  })
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    ...pluginOptions,
    clients: { up: { baseUrl: upstream.url, retry: false }, ...extraClients(upstream.url) }
  })
  app.get<{ Querystring: { marker: string, via?: string, own?: string } }>('/call', async (request) => {
    const { marker, via = 'up', own } = request.query
    request.log.info({ marker }, 'handler')
    for (const name of via.split(',')) {
      const headers = own === undefined ? undefined : { 'X-Request-ID': own }
      const res = await app.httpClients[name].get('/target', { query: { marker, client: name }, headers })
      await res.text()
    }
    return { id: request.id }
  })
  app.get('/boom', async () => { throw new Error('boom') })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const agent = new Agent({ connections: 4 })
  t.teardown(() => agent.close())
  return {
    app,
    upstream,
    base,
    logs,
    rawLogs,
    async send (path, headers = {}) {
      const res = await undiciRequest(`${base}${path}`, { dispatcher: agent, headers })
      return { statusCode: res.statusCode, headers: res.headers, body: await res.body.json() as Record<string, unknown> }
    },
    hitsFor (marker) {
      return upstream.hits.filter((hit) => new URL(hit.url, 'http://x').searchParams.get('marker') === marker)
    }
  }
}

test('isValidRequestId accepts 1 to 128 visible ASCII characters and nothing else', async (t) => {
  t.ok(isValidRequestId('a'))
  t.ok(isValidRequestId(visibleId(94)))
  t.ok(isValidRequestId(visibleId(128)))
  t.notOk(isValidRequestId(visibleId(129)))
  t.notOk(isValidRequestId(''))
  t.notOk(isValidRequestId('a b'))
  t.notOk(isValidRequestId('a\tb'))
  t.notOk(isValidRequestId('a\u0001b'))
  t.notOk(isValidRequestId('a\u007fb'))
  t.notOk(isValidRequestId('é'))
  t.notOk(isValidRequestId('a\r\nx-evil: 1'))
  t.notOk(isValidRequestId(undefined))
  t.notOk(isValidRequestId(['a']))
  t.notOk(isValidRequestId(42))
})

test('requestIdGenerator reads its header, case-insensitively, and refuses a bad header name', async (t) => {
  const generate = requestIdGenerator('X-Correlation-ID')
  const fake = (headers: Record<string, string>) => ({ headers }) as unknown as Parameters<typeof generate>[0]
  t.equal(generate(fake({ 'x-correlation-id': 'corr-1', 'x-request-id': 'other' })), 'corr-1')
  t.match(generate(fake({ 'x-request-id': 'other' })), UUID_V4)
  t.equal(requestIdGenerator()(fake({ 'x-request-id': 'rid-1' })), 'rid-1')
  const a = requestIdGenerator()(fake({}))
  const b = requestIdGenerator()(fake({}))
  t.match(a, UUID_V4)
  t.match(b, UUID_V4)
  t.not(a, b, 'each fresh id is new')
  t.throws(() => requestIdGenerator('bad header'), InvalidOptionsError)
  t.throws(() => requestIdGenerator('' as string), InvalidOptionsError)
  t.throws(() => requestIdGenerator(42 as unknown as string), { code: 'FRH_INVALID_OPTIONS', option: 'header' })
})

test('genReqId: a valid inbound id is request.id, echoed, forwarded and in every log line of the request', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() })
  const cases = [
    { marker: 'plain', id: 'abc-123' },
    { marker: 'punct', id: 'A.b_c~!#$%&*+/=?^`{|}:;<>@[]"\'\\' },
    { marker: 'max', id: visibleId(128) },
    { marker: 'one', id: 'x' }
  ]
  for (const { marker, id } of cases) {
    const reply = await s.send(`/call?marker=${marker}`, { 'x-request-id': id })
    t.equal(reply.statusCode, 200, marker)
    t.equal(reply.body.id, id, `${marker}: request.id`)
    t.equal(reply.headers['x-request-id'], id, `${marker}: echoed`)
    const hits = s.hitsFor(marker)
    t.equal(hits.length, 1, `${marker}: one upstream call`)
    t.equal(hits[0].headers['x-request-id'], id, `${marker}: forwarded`)
    const lines = s.logs.filter((line) => line.reqId === id)
    t.same(lines.map((line) => line.msg), ['incoming request', 'handler', 'request completed'], `${marker}: logged under its id`)
    t.equal(lines[1].marker, marker)
  }
  t.equal(s.upstream.hits.length, cases.length)
  t.notOk(s.logs.some((line) => line.level >= 40), 'nothing warned or failed')
})

test('genReqId: an invalid inbound id is replaced by a fresh UUID v4, which is echoed, logged and forwarded', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() })
  const seen = new Set<string>()

  async function check (marker: string, reply: { headers: Record<string, unknown>, body: Record<string, unknown> }, bad: string): Promise<void> {
    const id = reply.headers['x-request-id'] as string
    t.match(id, UUID_V4, `${marker}: echoed id is a UUID v4`)
    t.equal(reply.body.id, id, `${marker}: request.id`)
    const hits = s.hitsFor(marker)
    t.equal(hits.length, 1, `${marker}: one upstream call`)
    t.equal(hits[0].headers['x-request-id'], id, `${marker}: forwarded`)
    const lines = s.logs.filter((line) => line.reqId === id)
    t.same(lines.map((line) => line.msg), ['incoming request', 'handler', 'request completed'], `${marker}: logged under the new id`)
    if (bad !== '') t.notOk(s.rawLogs.some((line) => line.includes(bad)), `${marker}: the inbound value is not in the logs`)
    t.notOk(seen.has(id), `${marker}: a fresh id`)
    seen.add(id)
  }

  const tooLong = visibleId(129)
  await check('long', await s.send('/call?marker=long', { 'x-request-id': tooLong }), tooLong)
  await check('space', await s.send('/call?marker=space', { 'x-request-id': 'has space' }), 'has space')
  await check('empty', await s.send('/call?marker=empty', { 'x-request-id': '' }), '')
  await check('twice', await s.send('/call?marker=twice', { 'x-request-id': ['first-id', 'second-id'] }), 'first-id, second-id')
  await check('missing', await s.send('/call?marker=missing'), '')

  // Neither undici nor Node's parser lets a control character through a real
  // socket; inject hands it to Fastify as it is.
  const injected = await s.app.inject({ url: '/call?marker=control', headers: { 'x-request-id': 'a\u0001b' } })
  t.equal(injected.statusCode, 200)
  await check('control', { headers: injected.headers, body: injected.json() }, 'a\u0001b')
  t.equal(s.upstream.hits.length, 6)
})

test('requestIdGenerator(\'x-correlation-id\') takes the id from that header', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator('x-correlation-id') })
  const reply = await s.send('/call?marker=corr', { 'x-correlation-id': 'corr-42', 'x-request-id': 'not-this-one' })
  t.equal(reply.body.id, 'corr-42')
  t.equal(reply.headers['x-request-id'], 'corr-42')
  t.equal(s.hitsFor('corr')[0].headers['x-request-id'], 'corr-42')
  t.same(s.logs.filter((line) => line.reqId === 'corr-42').map((line) => line.msg), ['incoming request', 'handler', 'request completed'])

  const fresh = await s.send('/call?marker=corr-bad', { 'x-correlation-id': 'bad id', 'x-request-id': 'not-this-one' })
  t.match(fresh.body.id, UUID_V4)
  t.equal(fresh.headers['x-request-id'], fresh.body.id)
  t.equal(s.hitsFor('corr-bad')[0].headers['x-request-id'], fresh.body.id)
})

test('Fastify\'s requestIdHeader: a valid id passes through, an invalid one is replaced before echo and forwarding', async (t) => {
  const s = await setup(t, { requestIdHeader: 'x-request-id' })

  const valid = await s.send('/call?marker=valid', { 'x-request-id': 'from-gateway-1' })
  t.equal(valid.body.id, 'from-gateway-1')
  t.equal(valid.headers['x-request-id'], 'from-gateway-1')
  t.equal(s.hitsFor('valid')[0].headers['x-request-id'], 'from-gateway-1')
  const max = visibleId(128)
  const atMax = await s.send('/call?marker=max', { 'x-request-id': max })
  t.equal(atMax.headers['x-request-id'], max)
  t.equal(s.hitsFor('max')[0].headers['x-request-id'], max)

  const ids = new Set<string>()
  for (const [marker, bad] of [['long', visibleId(129)], ['space', 'two words']] as const) {
    const reply = await s.send(`/call?marker=${marker}`, { 'x-request-id': bad })
    const echoed = reply.headers['x-request-id'] as string
    t.match(echoed, UUID_V4, `${marker}: replaced by a UUID v4`)
    t.equal(reply.body.id, echoed, `${marker}: request.id is the replacement`)
    t.equal(s.hitsFor(marker)[0].headers['x-request-id'], echoed, `${marker}: the same id upstream`)
    const handlerLine = s.logs.find((line) => line.msg === 'handler' && line.marker === marker)
    t.equal(handlerLine?.reqId, echoed, `${marker}: the handler logs with the replacement`)
    ids.add(echoed)
  }
  t.equal(ids.size, 2, 'a fresh id each time')

  const control = await s.app.inject({ url: '/call?marker=control', headers: { 'x-request-id': 'a\u0001b' } })
  t.match(control.headers['x-request-id'], UUID_V4)
  t.equal(s.hitsFor('control')[0].headers['x-request-id'], control.headers['x-request-id'])

  // An empty header makes Fastify generate its own id, which is valid and kept.
  const empty = await s.send('/call?marker=empty', { 'x-request-id': '' })
  t.ok(isValidRequestId(empty.body.id))
  t.equal(empty.headers['x-request-id'], empty.body.id)
  t.equal(s.hitsFor('empty')[0].headers['x-request-id'], empty.body.id)
})

test('the caller\'s own id header wins over the inbound one, whatever its case', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() })
  const reply = await s.send('/call?marker=own&own=mine', { 'x-request-id': 'inbound-1' })
  t.equal(reply.headers['x-request-id'], 'inbound-1')
  // Node joins a repeated header with ', ': an exact match means it was sent once.
  t.equal(s.hitsFor('own')[0].headers['x-request-id'], 'mine')
})

test('propagateRequestId: false on a client sends no id; other clients still do', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() }, {}, (url) => ({ quiet: { baseUrl: url, propagateRequestId: false } }))
  const reply = await s.send('/call?marker=mixed&via=up,quiet', { 'x-request-id': 'rid-77' })
  t.equal(reply.headers['x-request-id'], 'rid-77')
  t.same(s.hitsFor('mixed').map((hit) => [new URL(hit.url, 'http://x').searchParams.get('client'), hit.headers['x-request-id']]), [
    ['up', 'rid-77'],
    ['quiet', undefined]
  ])
  await s.send('/call?marker=quiet-own&via=quiet&own=explicit', { 'x-request-id': 'rid-78' })
  t.equal(s.hitsFor('quiet-own')[0].headers['x-request-id'], 'explicit', 'a call can still set it itself')
})

test('echoRequestId: false leaves every reply without the id header but still forwards it', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() }, { echoRequestId: false })
  const reply = await s.send('/call?marker=noecho', { 'x-request-id': 'rid-quiet' })
  t.equal(reply.statusCode, 200)
  t.equal(reply.body.id, 'rid-quiet')
  t.equal(reply.headers['x-request-id'], undefined, 'not echoed')
  t.equal(s.hitsFor('noecho')[0].headers['x-request-id'], 'rid-quiet')

  const notFound = await s.send('/nowhere', { 'x-request-id': 'rid-404' })
  t.equal(notFound.statusCode, 404)
  t.equal(notFound.headers['x-request-id'], undefined)
})

test('the id is echoed on every reply: a 404 and an error reply carry it too', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() })
  const notFound = await s.send('/nowhere', { 'x-request-id': 'rid-404' })
  t.equal(notFound.statusCode, 404)
  t.equal(notFound.headers['x-request-id'], 'rid-404')
  const failed = await s.send('/boom', { 'x-request-id': 'rid-500' })
  t.equal(failed.statusCode, 500)
  t.equal(failed.headers['x-request-id'], 'rid-500')
})

test('a custom requestIdHeader is used inbound, on the reply and outbound', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator('x-correlation-id') }, { requestIdHeader: 'X-Correlation-ID' })
  const reply = await s.send('/call?marker=custom', { 'x-correlation-id': 'corr-9', 'x-request-id': 'ignored' })
  t.equal(reply.body.id, 'corr-9')
  t.equal(reply.headers['x-correlation-id'], 'corr-9')
  t.equal(reply.headers['x-request-id'], undefined)
  const [hit] = s.hitsFor('custom')
  t.equal(hit.headers['x-correlation-id'], 'corr-9')
  t.equal(hit.headers['x-request-id'], undefined, 'the default header is not sent')

  const fresh = await s.send('/call?marker=custom-bad', { 'x-correlation-id': visibleId(129) })
  t.match(fresh.headers['x-correlation-id'], UUID_V4)
  t.equal(fresh.body.id, fresh.headers['x-correlation-id'])
  t.equal(s.hitsFor('custom-bad')[0].headers['x-correlation-id'], fresh.headers['x-correlation-id'])

  await s.send('/call?marker=custom-own&own=mine', { 'x-correlation-id': 'corr-10' })
  const [own] = s.hitsFor('custom-own')
  t.equal(own.headers['x-correlation-id'], 'corr-10', 'a call\'s x-request-id is not the id header here')
  t.equal(own.headers['x-request-id'], 'mine')
})

test('propagateHeaders forwards the inbound traceparent when present, also for a client that does not send the id', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() }, { propagateHeaders: ['TraceParent'] },
    (url) => ({ quiet: { baseUrl: url, propagateRequestId: false } }))
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  await s.send('/call?marker=traced&via=up,quiet', { 'x-request-id': 'rid-t', traceparent })
  const [up, quiet] = s.hitsFor('traced')
  t.equal(up.headers.traceparent, traceparent)
  t.equal(up.headers['x-request-id'], 'rid-t')
  t.equal(quiet.headers.traceparent, traceparent, 'forwarded without the id')
  t.equal(quiet.headers['x-request-id'], undefined)

  await s.send('/call?marker=untraced&via=up,quiet', { 'x-request-id': 'rid-u' })
  const [up2, quiet2] = s.hitsFor('untraced')
  t.equal(up2.headers.traceparent, undefined, 'nothing to forward')
  t.equal(up2.headers['x-request-id'], 'rid-u')
  t.equal(quiet2.headers.traceparent, undefined)
  t.equal(quiet2.headers['x-request-id'], undefined)
  t.equal(s.upstream.hits.length, 4)
})

test('outside any request no id and no propagated header is sent', async (t) => {
  const s = await setup(t, { genReqId: requestIdGenerator() }, { propagateHeaders: ['traceparent'] })
  const res = await s.app.httpClients.up.get('/target', { query: { marker: 'outside' } })
  await res.text()
  const [hit] = s.hitsFor('outside')
  t.equal(hit.headers['x-request-id'], undefined)
  t.equal(hit.headers.traceparent, undefined)
})

test('Fastify\'s requestIdHeader: a 12 KB inbound id never reaches the log lines written after the plugin replaced it', async (t) => {
  const s = await setup(t, { requestIdHeader: 'x-request-id' })
  const huge = visibleId(128).repeat(96)
  t.equal(huge.length, 12_288)
  const reply = await s.send('/call?marker=huge', { 'x-request-id': huge })
  const id = reply.headers['x-request-id'] as string
  t.match(id, UUID_V4)
  t.equal(s.hitsFor('huge')[0].headers['x-request-id'], id)
  // Fastify writes its `incoming request` line before any hook runs: only genReqId avoids that one.
  const after = s.rawLogs.filter((line) => !line.includes('"incoming request"'))
  const handler = after.filter((line) => line.includes('"handler"'))
  t.equal(handler.length, 1)
  t.same(after.filter((line) => line.includes(huge.slice(0, 200))), [], 'no later line carries the refused id')
  for (const msg of ['handler', 'request completed']) {
    const line = after.find((raw) => raw.includes(`"${msg}"`)) ?? ''
    t.equal(line.split('"reqId"').length - 1, 1, `${msg}: one reqId key`)
    t.equal((JSON.parse(line) as LogLine).reqId, id, `${msg}: logged with the new id`)
  }
})

test('a route\'s own log level still applies to the logger bound to a replaced id', async (t) => {
  const logs: LogLine[] = []
  const app = Fastify({ requestIdHeader: 'x-request-id', logger: { level: 'info', stream: { write (line: string) { logs.push(JSON.parse(line) as LogLine) } } } })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' } } })
  app.get('/quiet', { logLevel: 'warn' }, async (request) => {
    request.log.info('not written')
    request.log.warn({ marker: 'quiet' }, 'written')
    return { id: request.id }
  })
  const reply = await app.inject({ url: '/quiet', headers: { 'x-request-id': 'bad id' } })
  const { id } = reply.json<{ id: string }>()
  t.match(id, UUID_V4)
  t.same(logs.filter((line) => line.msg === 'not written'), [])
  t.match(logs.filter((line) => line.msg === 'written'), [{ reqId: id, marker: 'quiet' }])
})

async function startupWarnings (t: Test, fastifyOptions: FastifyServerOptions, configure: (app: FastifyInstance) => void = () => {}): Promise<LogLine[]> {
  const lines: LogLine[] = []
  const app = Fastify({ ...fastifyOptions, logger: { level: 'info', stream: { write (line: string) { lines.push(JSON.parse(line) as LogLine) } } } })
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { up: { baseUrl: 'http://127.0.0.1:1' }, down: { baseUrl: 'http://127.0.0.1:2' } } })
  configure(app)
  app.get('/', async () => 'ok')
  await app.ready()
  await app.inject({ url: '/' })
  return lines.filter((line) => line.level === 40)
}

test('the app is warned once when its request ids are Fastify\'s counters', async (t) => {
  const counted = await startupWarnings(t, {})
  t.equal(counted.length, 1, 'one warning')
  t.match(counted[0].msg, /req-1.*requestIdGenerator\(\)/)

  t.same(await startupWarnings(t, { genReqId: requestIdGenerator() }), [], 'requestIdGenerator(): no warning')
  t.same(await startupWarnings(t, { genReqId: requestIdGenerator('x-correlation-id') }), [], 'for any header')
  t.same(await startupWarnings(t, { requestIdHeader: 'x-request-id' }), [], 'Fastify\'s requestIdHeader: no warning')
  t.same(await startupWarnings(t, {}, (app) => { app.setGenReqId(requestIdGenerator()) }), [], 'set after the plugin, before start: no warning')
  t.equal((await startupWarnings(t, { genReqId: () => 'mine' })).length, 1, 'an id generator of the app\'s own is warned about')
})
