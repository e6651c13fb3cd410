'use strict'

// One contender of the streaming phase, in a fresh process:
//   node streaming.js <contender> <origin> <durationMs> [mb]
// Throughput contenders read whole streams back to back for `durationMs`
// (after one warm-up stream) and answer { items, seconds, perSecond }; every
// item is counted, and every NDJSON record is parsed. 'slow consumer' reads
// one stream of `mb` MB at a tenth of the rate the upstream sends it raw, and
// answers the process's memory at its start and end.

const { request } = require('undici')
const { answer, answerErrors } = require('./common')

const MB_PER_STREAM = 16

async function oursClient (origin) {
  const { createHttpClient } = require('..')
  return createHttpClient({ name: 'feed', baseUrl: origin, pool: { connections: 4 } })
}

const contenders = {
  async 'ours ndjson' (origin) {
    const client = await oursClient(origin)
    return async () => {
      let items = 0
      const stream = await client.stream(`/ndjson?mb=${MB_PER_STREAM}`)
      for await (const record of stream.ndjson()) if (record !== null) items++
      return items
    }
  },
  async 'undici request + split2' (origin) {
    const split2 = require('split2')
    return async () => {
      let items = 0
      const { body } = await request(`${origin}/ndjson?mb=${MB_PER_STREAM}`)
      for await (const record of body.pipe(split2(JSON.parse))) if (record !== null) items++
      return items
    }
  },
  async 'ours events' (origin) {
    const client = await oursClient(origin)
    return async () => {
      let items = 0
      const stream = await client.stream(`/sse?mb=${MB_PER_STREAM}`)
      for await (const event of stream.events()) if (event.data !== '') items++
      return items
    }
  },
  async 'undici request + eventsource-parser' (origin) {
    const { createParser } = require('eventsource-parser')
    return async () => {
      let items = 0
      const parser = createParser({ onEvent (event) { if (event.data !== '') items++ } })
      const { body } = await request(`${origin}/sse?mb=${MB_PER_STREAM}`)
      const decoder = new TextDecoder()
      for await (const chunk of body) parser.feed(decoder.decode(chunk, { stream: true }))
      return items
    }
  },
  // The same parser read the way `events()` is, one event per step of a
  // `for await` loop: what a caller who wants a loop writes around it.
  async 'undici request + eventsource-parser, for await' (origin) {
    const { createParser } = require('eventsource-parser')
    async function * events (body) {
      let parsed = []
      const parser = createParser({ onEvent (event) { parsed.push(event) } })
      const decoder = new TextDecoder()
      for await (const chunk of body) {
        parser.feed(decoder.decode(chunk, { stream: true }))
        const ready = parsed
        parsed = []
        for (let i = 0; i < ready.length; i++) yield ready[i]
      }
    }
    return async () => {
      let items = 0
      const { body } = await request(`${origin}/sse?mb=${MB_PER_STREAM}`)
      for await (const event of events(body)) if (event.data !== '') items++
      return items
    }
  }
}

function memory () {
  const usage = process.memoryUsage()
  return { rssMB: usage.rss / 1048576, arrayBuffersMB: usage.arrayBuffers / 1048576, heapUsedMB: usage.heapUsed / 1048576 }
}

async function slowConsumer (origin, mb) {
  // The upstream's raw rate, read with undici and nothing else.
  const started = performance.now()
  const { body } = await request(`${origin}/big?mb=${Math.min(mb, 64)}`)
  await body.dump({ limit: Infinity })
  const rawBytesPerMs = Math.min(mb, 64) * 1048576 / (performance.now() - started)
  const target = rawBytesPerMs / 10
  const client = await oursClient(origin)
  globalThis.gc?.()
  const stream = await client.stream(`/big?mb=${mb}`)
  const start = memory()
  let peak = start
  let read = 0
  let lines = 0
  const readStarted = performance.now()
  for await (const line of stream.lines()) {
    read += line.length + 1
    // Pace the reader at a tenth of the raw rate, checked every 256 KiB.
    if (++lines % 256 === 0) {
      const ahead = read / target - (performance.now() - readStarted)
      if (ahead > 1) await new Promise((resolve) => setTimeout(resolve, ahead))
      const now = memory()
      if (now.rssMB > peak.rssMB) peak = now
    }
  }
  const seconds = (performance.now() - readStarted) / 1000
  const end = memory()
  await client.close()
  return { mb, lines, seconds, rawMBps: rawBytesPerMs * 1000 / 1048576, readMBps: read / 1048576 / seconds, start, end, peak }
}

async function main () {
  const [name, origin, durationMs, mb] = process.argv.slice(2)
  if (name === 'slow consumer') {
    answer(await slowConsumer(origin, Number(mb)))
    return
  }
  const run = await contenders[name](origin)
  await run()
  let items = 0
  const started = performance.now()
  const until = started + Number(durationMs)
  do items += await run()
  while (performance.now() < until)
  const seconds = (performance.now() - started) / 1000
  answer({ items, seconds, perSecond: items / seconds })
}

answerErrors(main)
