import { AsyncLocalStorage } from 'node:async_hooks'
import { pipeline } from 'node:stream/promises'
import { Writable } from 'node:stream'
import { test } from 'tap'
import { CHANNELS, createHttpClient } from '../plugin'
import { startUpstream } from './helpers/upstream'
import { published } from './helpers/wait'

const store = new AsyncLocalStorage<string>()

test("a stream's events run in the async context of the code that opened it", async (t) => {
  const upstream = await startUpstream(async (req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.flushHeaders()
    if (req.url === '/stall') return
    const from = Number(req.headers['last-event-id'] ?? 0) + 1
    res.write(`id: ${from}\ndata: x\n\n`)
    if (from > 1) {
      res.end()
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
    res.socket?.destroy()
  })
  t.teardown(() => upstream.close())
  const client = createHttpClient({ name: 'ctx', baseUrl: upstream.url, retry: { backoffInitialMs: 1, jitter: 'none' } })
  t.teardown(() => client.close())

  const seen: Array<[string, string | undefined]> = []
  const listen = (channel: string): void => {
    const events = published<unknown>(t, channel)
    const push = events.push.bind(events)
    events.push = (...items: unknown[]) => {
      seen.push([channel, store.getStore()])
      return push(...items)
    }
  }
  listen(CHANNELS.streamResumed)
  listen(CHANNELS.streamIdleTimeout)

  await store.run('resumed', async () => {
    const stream = await client.stream('/', { resume: true })
    for await (const event of stream.events()) {
      t.equal(store.getStore(), 'resumed', `event ${event.id} is read in the caller's context`)
    }
  })
  await store.run('idle', async () => {
    const stream = await client.stream('/stall', { idleTimeout: 100 })
    let where: string | undefined
    await pipeline(stream.body, new Writable({ write (_chunk, _encoding, callback) { callback() } })).catch(() => {
      where = store.getStore()
    })
    t.equal(where, 'idle', "the pipeline's failure is heard in the caller's context")
  })
  await store.run('error listener', async () => {
    const stream = await client.stream('/stall', { idleTimeout: 100 })
    const where = await new Promise<string | undefined>((resolve) => {
      stream.body.on('error', () => resolve(store.getStore()))
      stream.body.resume()
    })
    t.equal(where, 'error listener', "a body's 'error' listener runs in the caller's context")
  })
  t.same(seen, [
    [CHANNELS.streamResumed, 'resumed'],
    [CHANNELS.streamIdleTimeout, 'idle'],
    [CHANNELS.streamIdleTimeout, 'error listener']
  ], 'the diagnostics messages about each stream are published in its caller\'s context')
})
