import { test } from 'tap'
import { InvalidResponseError, UpstreamError } from '../plugin'
import { clientFor, rejection, sendJson, upstreamFor } from './helpers/upstream'

// How a response's body is held, read once, streamed and reported when it fails.

test('a large 2xx body nobody reads yet is held back, then read whole', async (t) => {
  const big = 'x'.repeat(512 * 1024)
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, { big }))
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const res = await client.get('/big')
  // Let the body arrive past the unread high-water mark before anyone reads it.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const body = await res.json<{ big: string }>()
  t.equal(body.big.length, big.length)
  t.equal((await res.text()).length, JSON.stringify({ big }).length, 'a body that arrived whole reads the same again')
})

test('a body that failed before anyone read it: json() and body report the failure', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 })
    res.write('{"partial":')
    setTimeout(() => res.socket?.destroy(), 10)
  })
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const first = await client.get('/cut')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.ok(await rejection(first.json()) instanceof UpstreamError, 'json() rejects with UpstreamError')
  const second = await client.get('/cut')
  await new Promise((resolve) => setTimeout(resolve, 100))
  const error = await new Promise((resolve) => second.body.on('error', resolve).resume())
  t.ok(error instanceof UpstreamError, 'the stream made afterwards errors with UpstreamError')
})

test('a complete body that is not JSON: json() rejects with InvalidResponseError, the parse error its cause', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{not json')
  })
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const res = await client.get('/bad')
  await new Promise((resolve) => setTimeout(resolve, 20))
  const error = await rejection(res.json())
  t.type(error, InvalidResponseError)
  t.type((error as Error).cause, SyntaxError)
})

test('a streamed body is read with backpressure', async (t) => {
  const chunk = 'y'.repeat(64 * 1024)
  const upstream = await upstreamFor(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    for (let i = 0; i < 32; i++) res.write(chunk)
    res.end()
  })
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const res = await client.get('/stream')
  const body = res.body
  t.equal(res.body, body, 'one stream per response')
  let size = 0
  for await (const part of body) {
    size += (part as Buffer).length
    // A slow reader: the controller is paused and resumed as the stream drains.
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(size, 32 * chunk.length)
  t.equal((await rejection(res.json()) as Error).name, 'TypeError', 'a streamed body cannot be read again')
})

test('one body, one reader at a time; a finished body can still be had as a stream', async (t) => {
  const upstream = await upstreamFor(t, (req, res) => {
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"a":')
      setTimeout(() => res.end('1}'), 100)
      return
    }
    sendJson(res, 200, { done: true })
  })
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false })
  const slow = await client.get('/slow')
  const first = slow.json()
  t.equal((await rejection(slow.text()) as Error).name, 'TypeError', 'a second reader while the first waits')
  t.same(await first, { a: 1 })
  const done = await client.get('/done')
  await new Promise((resolve) => setTimeout(resolve, 20))
  let text = ''
  for await (const part of done.body) text += String(part)
  t.same(JSON.parse(text), { done: true })
})
