'use strict'

// The upstream of the streaming phase, in its own process: long bodies sent
// as fast as the socket takes them (backpressure respected), from one 64 KiB
// block built at start.
//   GET /ndjson?mb=N   NDJSON records of about 60 bytes
//   GET /sse?mb=N      Server-Sent Events, each with an id and one data line
//   GET /big?mb=N      NDJSON records of 1 KiB
// Answers { port, pid } once listening.

const http = require('node:http')

const BLOCK = 64 * 1024

/** `make(i)` repeated into a block of whole records, at most 64 KiB. */
function block (make) {
  const parts = []
  let size = 0
  for (let i = 0; ; i++) {
    const record = make(i)
    if (size + record.length > BLOCK) break
    parts.push(record)
    size += record.length
  }
  return { bytes: Buffer.from(parts.join('')), records: parts.length }
}

const BLOCKS = {
  '/ndjson': block((i) => `${JSON.stringify({ id: 100000 + i, name: 'item', ok: true, score: 0.5, tags: ['a', 'b'] })}\n`),
  '/sse': block((i) => `id: ${100000 + i}\ndata: {"token":"tok${i % 10}","index":${i}}\n\n`),
  '/big': block((i) => `${JSON.stringify({ id: i, pad: 'x'.repeat(1000) }).slice(0, 1023)}\n`)
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x')
  const body = BLOCKS[url.pathname]
  if (body === undefined) {
    res.writeHead(404).end()
    return
  }
  const blocks = Math.max(1, Math.round(Number(url.searchParams.get('mb') ?? 1) * 1024 * 1024 / body.bytes.length))
  res.writeHead(200, { 'content-type': url.pathname === '/sse' ? 'text/event-stream' : 'application/x-ndjson', 'x-records': String(blocks * body.records) })
  let sent = 0
  const pump = () => {
    while (sent < blocks) {
      sent++
      if (!res.write(body.bytes)) {
        res.once('drain', pump)
        return
      }
    }
    res.end()
  }
  res.on('close', () => { sent = blocks })
  pump()
})

server.listen(0, '127.0.0.1', () => {
  process.send({ port: server.address().port, pid: process.pid })
})
