'use strict'

// The upstream every contender calls, alone in its process so that the
// client's process measures only the client.
//   GET /       200 with a small JSON body
//   GET /flaky  503 for every other request (a 50 % failure rate), else 200

const http = require('node:http')

const OK = Buffer.from(JSON.stringify({ ok: true, service: 'upstream', items: [1, 2, 3] }))
const UNAVAILABLE = Buffer.from(JSON.stringify({ ok: false, error: 'unavailable' }))
const OK_HEADERS = { 'content-type': 'application/json', 'content-length': OK.length }
const UNAVAILABLE_HEADERS = { 'content-type': 'application/json', 'content-length': UNAVAILABLE.length }

let flakyCount = 0

const server = http.createServer((req, res) => {
  // Drain any request body so the connection stays reusable.
  req.resume()
  if (req.url === '/flaky' && flakyCount++ % 2 === 0) {
    res.writeHead(503, UNAVAILABLE_HEADERS)
    res.end(UNAVAILABLE)
    return
  }
  res.writeHead(200, OK_HEADERS)
  res.end(OK)
})

// Clients keep their sockets for the whole run; do not close them under a slow round.
server.keepAliveTimeout = 120_000
server.headersTimeout = 121_000
server.maxRequestsPerSocket = 0

server.listen(0, '127.0.0.1', () => {
  process.send({ port: server.address().port })
})

process.on('SIGTERM', () => process.exit(0))
process.on('disconnect', () => process.exit(0))
