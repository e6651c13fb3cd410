import { test } from 'tap'
import { TimeoutError } from '../plugin'
import { clientFor, rejection, sendJson, upstreamFor } from './helpers/upstream'

// An attempt's timeout while it waits for a connection: it leaves the queue, and a late connection is not used for it.

test('a connection made after its attempt timed out is not used for it: the late request is aborted unsent', async (t) => {
  const upstream = await upstreamFor(t, (_req, res) => sendJson(res, 200, {}))
  const net = await import('node:net')
  // A connector that connects, but only after 300 ms.
  const late = (options: { hostname: string, port: string }, callback: (error: Error | null, socket: unknown) => void): void => {
    setTimeout(() => {
      const socket = net.connect(Number(options.port), options.hostname, () => callback(null, socket))
    }, 300)
  }
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false, pool: { connect: late as never } })
  const error = await rejection(client.get('/x', { timeout: 100 }))
  t.ok(error instanceof TimeoutError, 'the attempt timed out while connecting')
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.equal(upstream.hits.length, 0, 'the request was not sent once the connection came')
})

test('a queued attempt that times out leaves the queue without disturbing the others', async (t) => {
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const upstream = await upstreamFor(t, async (req, res) => {
    if (req.url === '/hold') await held
    sendJson(res, 200, { url: req.url })
  })
  const client = clientFor(t, { name: 'edges', baseUrl: upstream.url, retry: false, pool: { connections: 1 } })
  const first = client.get('/hold')
  while (upstream.hits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))
  const second = client.get('/second')
  const middle = rejection(client.get('/middle', { timeout: 100 }))
  const third = client.get('/third')
  t.ok(await middle instanceof TimeoutError, 'the middle one timed out in the queue')
  release()
  t.same((await (await first).json()), { url: '/hold' })
  t.same((await (await second).json()), { url: '/second' })
  t.same((await (await third).json()), { url: '/third' })
  t.same(upstream.hits.map((hit) => hit.url), ['/hold', '/second', '/third'])
})
