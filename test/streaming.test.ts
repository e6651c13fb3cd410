import type { ServerResponse } from 'node:http'
import Fastify from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import resilientHttp, {
  CHANNELS, CircuitOpenError, ClientClosedError, createHttpClient, HttpStatusError, HttpStream, InvalidRequestError,
  InvalidResponseError, OverloadedError, ResponseTooLargeError, TimeoutError, UpstreamError
} from '../plugin'
import './helpers/fastify-types'
import { drain } from './helpers/drain'
import { rejection, upstreamFor } from './helpers/upstream'
import { eventually, published } from './helpers/wait'

/** Writes `lines` one at a time, `everyMs` apart, then ends (or, with `hold`, stays open). */
function writeSlowly (res: ServerResponse, lines: string[], everyMs: number, end = true): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' })
  res.flushHeaders()
  let i = 0
  const timer = setInterval(() => {
    if (res.destroyed) {
      clearInterval(timer)
      return
    }
    if (i < lines.length) {
      res.write(lines[i++])
      return
    }
    clearInterval(timer)
    if (end) res.end()
  }, everyMs)
}

test('a stream opens through retries and yields NDJSON records', async (t) => {
  const upstream = await upstreamFor(t, (_req, res, _hit, index) => {
    if (index === 0) {
      res.writeHead(503).end('busy')
      return
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.write('{"n":1}\n{"n"')
    setTimeout(() => res.end(':2}\n\n{"n":3}'), 100)
  })
  const client = createHttpClient({ name: 'feed', baseUrl: upstream.url, retry: { backoffInitialMs: 1, jitter: 'none' } })
  t.teardown(() => client.close())

  const stream = await client.stream('/feed')
  t.equal(stream.statusCode, 200)
  t.equal(stream.attempts, 2, 'the 503 was retried before the commit')
  t.equal(stream.headers['content-type'], 'application/x-ndjson')
  t.equal(client.stats().streams, 1, 'open: counted in stats().streams')
  t.equal(client.stats().inFlight, 1, 'and in inFlight')
  const { items, error } = await drain(stream.ndjson<{ n: number }>())
  t.equal(error, null)
  t.same(items, [{ n: 1 }, { n: 2 }, { n: 3 }], 'records split across chunks, a blank line skipped, the last without a break')
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
  t.equal(client.stats().retries, 1)
})

test('lines: LF and CRLF, empty lines, UTF-8 split across chunks, a last line without a break', async (t) => {
  const euro = Buffer.from('€uro')
  const upstream = await upstreamFor(t, async (_req, res) => {
    res.writeHead(200)
    res.write('one\r\n\ntwo\n')
    res.write(euro.subarray(0, 1))
    await sleep(20)
    res.write(Buffer.concat([euro.subarray(1), Buffer.from('\r')]))
    await sleep(20)
    res.end('\nlast')
  })
  const client = createHttpClient({ name: 'lines', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/')).lines())
  t.equal(error, null)
  t.same(items, ['one', '', 'two', '€uro', 'last'])
})

test('body: the bytes as a Readable', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200)
    res.write('abc')
    res.end('def')
  })
  const client = createHttpClient({ name: 'bytes', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const stream = await client.stream('/', { method: 'post', json: { q: 1 } })
  t.equal(upstream.hits[0].method, 'POST')
  t.equal(upstream.hits[0].body, '{"q":1}')
  t.equal(stream.body, stream.body, 'one Readable')
  const chunks: Buffer[] = []
  for await (const chunk of stream.body) chunks.push(chunk as Buffer)
  t.equal(Buffer.concat(chunks).toString(), 'abcdef')
  t.equal(client.stats().streams, 0)
})

test('a stream is read one way, once', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { res.writeHead(200).end('x\n') })
  const client = createHttpClient({ name: 'once', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  const lines = stream.lines()
  for (const second of [() => stream.lines(), () => stream.ndjson(), () => stream.events(), () => stream.body]) {
    t.throws(second, InvalidRequestError)
  }
  t.same((await drain(lines)).items, ['x'])
  const other = await client.stream('/')
  t.ok(other.body.readable)
  t.throws(() => other.lines(), /already being read/)
  other.close()
})

test('a final answer that is not 2xx rejects with HttpStatusError', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { res.writeHead(404, { 'content-type': 'text/plain' }).end('x'.repeat(2000)) })
  const client = createHttpClient({ name: 'missing', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const error = await rejection(client.stream('/gone'))
  t.ok(error instanceof HttpStatusError)
  const status = error as HttpStatusError
  t.equal(status.upstreamStatusCode, 404)
  t.equal(status.body.length, 1024, "the body's first KiB")
  t.equal(status.response.statusCode, 404)
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
})

test('bad stream options reject with InvalidRequestError', async (t) => {
  const client = createHttpClient({ name: 'opts', baseUrl: 'http://127.0.0.1:1' })
  t.teardown(() => client.close())
  const cases: Array<[unknown, RegExp]> = [
    [{ idleTimeout: -1 }, /idleTimeout/],
    [{ maxDuration: 'long' }, /maxDuration/],
    [{ resume: 'yes' }, /resume/],
    [{ resume: { maxReconnects: 0 } }, /resume\.maxReconnects/],
    [{ resume: { tries: 1 } }, /resume\.tries/],
    [{ method: 'CONNECT' }, /CONNECT/],
    [{ method: 'G E T' }, /method/],
    [{ timout: 5 }, /timout/],
    ['fast', /options/]
  ]
  for (const [options, message] of cases) {
    const error = await rejection(client.stream('/', options as never))
    t.ok(error instanceof InvalidRequestError, `${JSON.stringify(options)} is refused`)
    t.match((error as Error).message, message)
  }
  await client.close()
  t.ok(await rejection(client.stream('/')) instanceof ClientClosedError, 'a closed client refuses streams')
})

test('a healthy stream outlives timeout and totalTimeout: it is bounded by silence', async (t) => {
  const lines = Array.from({ length: 8 }, (_, i) => `${i}\n`)
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, lines, 150) })
  const client = createHttpClient({ name: 'slow', baseUrl: upstream.url, timeout: 400, totalTimeout: 500, idleTimeout: 2_000 })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/')).lines())
  t.equal(error, null, 'no timeout cut it')
  t.equal(items.length, 8)
})

test('a stalled stream fails with TimeoutError kind idle after what had arrived', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, ['{"a":1}\n', '{"a":2}\n{"a"'], 10, false) })
  const client = createHttpClient({ name: 'stall', baseUrl: upstream.url, idleTimeout: 10_000, circuitBreaker: { failureThreshold: 1 } })
  t.teardown(() => client.close())
  const idle = published<{ idleTimeoutMs: number }>(t, CHANNELS.streamIdleTimeout)
  const started = Date.now()
  const { items, error } = await drain((await client.stream('/', { idleTimeout: 200 })).ndjson())
  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'idle')
  t.equal((error as TimeoutError).delivered, 2, 'the two complete records came first')
  t.same(items, [{ a: 1 }, { a: 2 }])
  t.ok(Date.now() - started < 2_500, 'cut soon after 200 ms of silence')
  t.same(idle.map((event) => event.idleTimeoutMs), [200])
  t.equal(client.stats().circuit, 'open', 'an idle timeout is a failure for the breaker')
  t.equal(client.stats().streams, 0)
})

test('maxDuration ends a working stream with TimeoutError kind total; the breaker counts it no failure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, Array.from({ length: 100 }, (_, i) => `${i}\n`), 20) })
  const client = createHttpClient({ name: 'bounded', baseUrl: upstream.url, circuitBreaker: { failureThreshold: 1 } })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { maxDuration: 200 })).lines())
  t.ok(error instanceof TimeoutError)
  t.equal((error as TimeoutError).kind, 'total')
  t.equal((error as TimeoutError).delivered, items.length)
  t.ok(items.length > 0 && items.length < 100)
  t.equal(client.stats().circuit, 'closed')
})

test('a reset mid-stream fails with UpstreamError after every complete line, with the count', async (t) => {
  const upstream = await upstreamFor(t, async (_req, res) => {
    res.writeHead(200)
    res.write('a\nb\nc')
    await sleep(30)
    res.socket?.destroy()
  })
  const client = createHttpClient({ name: 'reset', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/')).lines())
  t.same(items, ['a', 'b'], 'the unfinished line is dropped')
  t.ok(error instanceof UpstreamError)
  t.equal((error as UpstreamError).delivered, 2)
  t.equal(client.stats().streams, 0)
})

test('a line over maxResponseBytes fails with ResponseTooLargeError; the lines before it come first', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => {
    res.writeHead(200)
    if (req.url === '/inside') res.end(`ok\n${'x'.repeat(100)}\nafter\n`)
    else if (req.url === '/first') res.end(`${'x'.repeat(100)}\nafter\n`)
    else res.end(`ok\n${'x'.repeat(100)}`)
  })
  // A total body far over the limit is fine: the limit is per line.
  const client = createHttpClient({ name: 'limited', baseUrl: upstream.url, maxResponseBytes: 64 })
  t.teardown(() => client.close())
  for (const [path, before] of [['/inside', ['ok']], ['/first', []], ['/unfinished', ['ok']]] as const) {
    const { items, error } = await drain((await client.stream(path)).lines())
    t.same(items, before, `${path}: the lines before it`)
    t.ok(error instanceof ResponseTooLargeError, `${path}: ResponseTooLargeError`)
    t.equal((error as ResponseTooLargeError).limit, 64)
    t.equal((error as ResponseTooLargeError).delivered, before.length)
  }
  const big = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': 200 })
    res.end(`${'y'.repeat(49)}\n`.repeat(4))
  })
  const bigClient = createHttpClient({ name: 'long', baseUrl: big.url, maxResponseBytes: 64 })
  t.teardown(() => bigClient.close())
  t.equal((await drain((await bigClient.stream('/')).lines())).items.length, 4, 'a content-length over the limit is no failure for a stream')
})

test('an NDJSON line that is not JSON fails with InvalidResponseError and its line number', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { res.writeHead(200).end('{"a":1}\n   \n{"a":2}\n{oops}\n{"a":3}\n') })
  const client = createHttpClient({ name: 'broken', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/')).ndjson())
  t.same(items, [{ a: 1 }, { a: 2 }])
  t.ok(error instanceof InvalidResponseError)
  t.equal((error as InvalidResponseError).line, 4)
  t.equal((error as InvalidResponseError).code, 'FRH_INVALID_RESPONSE')
  t.equal((error as InvalidResponseError).statusCode, 502)
  t.equal((error as InvalidResponseError).delivered, 2)
  t.equal(client.stats().streams, 0)
})

test('leaving the loop ends the stream at once and frees its connection', async (t) => {
  let closed = 0
  const upstream = await upstreamFor(t, (req, res) => {
    res.on('close', () => { closed++ })
    if (req.url === '/after') {
      res.writeHead(200).end('fine\n')
      return
    }
    writeSlowly(res, Array.from({ length: 1000 }, (_, i) => `${i}\n`), 5)
  })
  const client = createHttpClient({ name: 'leave', baseUrl: upstream.url, pool: { connections: 1 }, circuitBreaker: { failureThreshold: 1 } })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  for await (const line of stream.lines()) {
    if (line === '2') break
  }
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().inFlight, 0)
  t.ok(await eventually(() => closed === 1), 'the upstream saw the request end')
  const after = await client.stream('/after')
  t.same((await drain(after.lines())).items, ['fine'], 'the one connection serves again')
  t.equal(client.stats().circuit, 'closed', 'a consumer that leaves is no failure')

  const closedByCall = await client.stream('/')
  const iterator = closedByCall.lines()
  await iterator.next()
  const waiting = iterator.next()
  closedByCall.close()
  closedByCall.close()
  const result = await waiting
  t.equal(result.done, true, 'close() ends a waiting read')
  t.same(await iterator.next(), { done: true, value: undefined })
})

test('a consumer slower than the upstream pauses it: memory stays bounded', async (t) => {
  let written = 0
  let paused = 0
  const line = `${'z'.repeat(1023)}\n`
  // Far more than the kernel's socket buffers hold on loopback.
  const total = 64 * 1024 * 1024
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200)
    const pump = (): void => {
      while (written < total) {
        written += line.length
        if (!res.write(line)) {
          paused++
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  const client = createHttpClient({ name: 'slowreader', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  const iterator = stream.lines()
  await iterator.next()
  await sleep(200)
  t.ok(written < total / 2, `the upstream was held back (${written} of ${total} bytes written)`)
  t.ok(paused > 0, 'its writes waited for the socket to drain')
  let count = 1
  for (;;) {
    const { done } = await iterator.next()
    if (done === true) break
    count++
  }
  t.equal(count, total / line.length, 'every line came through once read')
})

test('the caller aborting a stream ends it with its reason, as given', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, Array.from({ length: 100 }, (_, i) => `${i}\n`), 10) })
  const client = createHttpClient({ name: 'abort', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const controller = new AbortController()
  const stream = await client.stream('/', { signal: controller.signal })
  const reason = new Error('the caller left')
  const got: string[] = []
  let error: unknown = null
  try {
    for await (const line of stream.lines()) {
      got.push(line)
      if (got.length === 2) controller.abort(reason)
    }
  } catch (caught) {
    error = caught
  }
  t.equal(error, reason)
  t.notOk('delivered' in reason)
  t.equal(client.stats().streams, 0)
})

test('an open stream counts against maxInFlight until it ends', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, ['1\n', '2\n'], 50) })
  const client = createHttpClient({ name: 'limit', baseUrl: upstream.url, maxInFlight: 1 })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  t.ok(await rejection(client.get('/')) instanceof OverloadedError, 'no room while it is open')
  await drain(stream.lines())
  const res = await client.get('/')
  t.equal(res.statusCode, 200, 'room again once it ended')
  await res.text()
})

test('the breaker judges a stream once, when it ends', async (t) => {
  let fail = true
  const upstream = await upstreamFor(t, (req, res) => {
    if (req.url === '/fail') {
      res.writeHead(200)
      res.write('a\n')
      setTimeout(() => res.socket?.destroy(), 20)
      return
    }
    if (fail) {
      res.writeHead(500).end()
      return
    }
    writeSlowly(res, ['1\n', '2\n', '3\n'], 20)
  })
  const client = createHttpClient({ name: 'judge', baseUrl: upstream.url, retry: false, circuitBreaker: { failureThreshold: 2, recoveryMs: 100 } })
  t.teardown(() => client.close())
  t.ok(await rejection(client.stream('/')) instanceof HttpStatusError)
  const { error } = await drain((await client.stream('/fail')).lines())
  t.ok(error instanceof UpstreamError, 'the failure after the commit')
  t.equal(client.stats().circuit, 'open', 'the 500 and the broken stream: two failures')
  t.ok(await rejection(client.stream('/')) instanceof CircuitOpenError, 'an open circuit refuses streams')
  await sleep(150)
  fail = false
  const probe = await client.stream('/')
  t.equal(client.stats().circuit, 'half-open', 'the probe is not judged at its headers')
  const iterator = probe.lines()
  await iterator.next()
  await iterator.return?.()
  t.equal(client.stats().circuit, 'closed', 'a consumer that stops reading found it working')
})

test('fastify.close() gives an open stream the grace period, then ends it with ClientClosedError', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, Array.from({ length: 1000 }, (_, i) => `${i}\n`), 20) })
  const app = Fastify()
  await app.register(resilientHttp, { clients: { feed: { baseUrl: upstream.url, timeout: 300 } } })
  await app.ready()
  const stream = await app.httpClients.feed.stream('/')
  const reading = drain(stream.lines())
  await sleep(50)
  const started = Date.now()
  await app.close()
  const elapsed = Date.now() - started
  const { items, error } = await reading
  t.ok(error instanceof ClientClosedError, 'ended by close')
  t.equal((error as ClientClosedError).delivered, items.length)
  t.ok(elapsed >= 250, `it had the grace period (${elapsed} ms)`)
  t.ok(elapsed < 3_000, 'and no more')
})

test('a stream that ends within the grace period ends cleanly', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, ['1\n', '2\n', '3\n'], 30) })
  const client = createHttpClient({ name: 'graceful', baseUrl: upstream.url, timeout: 2_000 })
  const stream = await client.stream('/')
  const reading = drain(stream.lines())
  await client.close()
  const { items, error } = await reading
  t.equal(error, null)
  t.same(items, ['1', '2', '3'])
})

test('body: a failure after the commit destroys the Readable with the error; destroying it closes the stream', async (t) => {
  const upstream = await upstreamFor(t, async (req, res) => {
    res.writeHead(200)
    res.flushHeaders()
    if (req.url === '/hold') return
    res.write('abc')
    await sleep(30)
    res.socket?.destroy()
  })
  const client = createHttpClient({ name: 'bodyfail', baseUrl: upstream.url })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  const chunks: Buffer[] = []
  let error: unknown = null
  try {
    for await (const chunk of stream.body) chunks.push(chunk as Buffer)
  } catch (caught) {
    error = caught
  }
  t.equal(Buffer.concat(chunks).toString(), 'abc')
  t.ok(error instanceof UpstreamError)
  t.equal((error as UpstreamError).delivered, 3, 'bytes, for body')

  const held = await client.stream('/hold')
  held.body.destroy()
  t.ok(await eventually(() => client.stats().streams === 0), 'destroying the body closes the stream')
})

test('a bad record while the stream is open ends it at once and frees its connection', async (t) => {
  let closed = false
  const upstream = await upstreamFor(t, (_req, res) => {
    res.on('close', () => { closed = true })
    res.writeHead(200)
    res.write('{"a":1}\nnot json\n')
  })
  const client = createHttpClient({ name: 'badopen', baseUrl: upstream.url, circuitBreaker: { failureThreshold: 1 } })
  t.teardown(() => client.close())
  const { items, error } = await drain((await client.stream('/', { resume: {} })).ndjson())
  t.same(items, [{ a: 1 }])
  t.ok(error instanceof InvalidResponseError)
  t.ok(await eventually(() => closed), 'the request was ended')
  t.equal(client.stats().streams, 0)
  t.equal(client.stats().circuit, 'closed', 'a broken body is not the upstream failing')
})

test('HttpStream cannot be constructed', async (t) => {
  t.throws(() => new (HttpStream as unknown as new (key: symbol) => unknown)(Symbol('open')), TypeError)
})

test('time the consumer keeps the upstream paused is not silence; body pauses too', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200)
    const line = `${'q'.repeat(1023)}\n`
    let left = 8 * 1024
    const pump = (): void => {
      while (left > 0) {
        left--
        if (!res.write(line)) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  // A busy machine may leave a healthy upstream silent for a while: the idle bound has room for that, and the pause is four times it.
  const client = createHttpClient({ name: 'paused', baseUrl: upstream.url, idleTimeout: 500 })
  t.teardown(() => client.close())
  const stream = await client.stream('/')
  const iterator = stream.lines()
  await iterator.next()
  await sleep(2_000)
  let count = 1
  for (;;) {
    const { done } = await iterator.next()
    if (done === true) break
    count++
  }
  t.equal(count, 8 * 1024, 'no idle timeout while paused by its reader')

  const bytes = await client.stream('/')
  let read = 0
  for await (const chunk of bytes.body) {
    read += (chunk as Buffer).length
    if (read < 256 * 1024) await sleep(1)
  }
  t.equal(read, 8 * 1024 * 1024, 'body: every byte, read slowly')
})

test('fastify.close() with a stream a route relays: the stream has the grace period from close on, then the route ends and close completes', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => { writeSlowly(res, Array.from({ length: 1000 }, (_, i) => `${i}\n`), 20) })
  const app = Fastify()
  await app.register(resilientHttp, { clients: { feed: { baseUrl: upstream.url, timeout: 300 } } })
  let relayError: unknown
  app.get('/relay', async (request, reply) => {
    const stream = await request.server.httpClients.feed.stream('/')
    reply.hijack()
    // A keep-alive connection that goes idle after close began would hold the server until its keep-alive timeout.
    reply.raw.writeHead(200, { 'content-type': 'text/plain', connection: 'close' })
    try {
      for await (const line of stream.lines()) reply.raw.write(`${line}\n`)
    } catch (error) {
      relayError = error
    }
    reply.raw.end()
  })
  const origin = await app.listen({ port: 0, host: '127.0.0.1' })
  const caller = createHttpClient({ name: 'caller', baseUrl: origin })
  t.teardown(() => caller.close())
  const relayed = await caller.stream('/relay')
  const reading = drain(relayed.lines())
  await sleep(50)
  const started = Date.now()
  await app.close()
  const elapsed = Date.now() - started
  const { items, error } = await reading
  t.ok(relayError instanceof ClientClosedError, 'the relayed stream ended by close')
  t.equal(error, null, 'the route ended its own answer cleanly')
  t.ok(items.length > 0, 'lines were relayed')
  t.ok(elapsed >= 250, `the stream had the grace period (${elapsed} ms)`)
  t.ok(elapsed < 3_000, `and close was not held by it (${elapsed} ms)`)
})
