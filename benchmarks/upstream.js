'use strict'

// The upstream every contender calls, alone in its process so that the
// client's process measures only the client.
//   GET /          200 with a small JSON body
//   GET /flaky     503 for every other request (a 50 % failure rate), else 200
//   GET /tail      a heavy tail: 2 % of requests answer after 50-200 ms, the rest at once
//   GET /capacity  a service that serves 50 requests at once in 20 ms each; above that
//                  its latency grows with the square of the overload and a share of the
//                  requests, (inFlight - 50) / inFlight, fail with 503
//   GET /__stats   { peakInFlight, requests } of /capacity since the last
//                  /__stats?reset, which the measuring child sends when its window opens

const http = require('node:http')

const OK = Buffer.from(JSON.stringify({ ok: true, service: 'upstream', items: [1, 2, 3] }))
const UNAVAILABLE = Buffer.from(JSON.stringify({ ok: false, error: 'unavailable' }))
const OK_HEADERS = { 'content-type': 'application/json', 'content-length': OK.length }
const UNAVAILABLE_HEADERS = { 'content-type': 'application/json', 'content-length': UNAVAILABLE.length }

const TAIL_SHARE = 0.02
const TAIL_MIN_MS = 50
const TAIL_SPREAD_MS = 150
const CAPACITY = 50
const BASE_MS = 20

let flakyCount = 0
let capacityInFlight = 0
let peakInFlight = 0
let capacityRequests = 0

function ok (res) {
  if (res.destroyed) return
  res.writeHead(200, OK_HEADERS)
  res.end(OK)
}

function unavailable (res) {
  if (res.destroyed) return
  res.writeHead(503, UNAVAILABLE_HEADERS)
  res.end(UNAVAILABLE)
}

function capacity (req, res) {
  capacityRequests++
  capacityInFlight++
  if (capacityInFlight > peakInFlight) peakInFlight = capacityInFlight
  const load = capacityInFlight / CAPACITY
  const overloaded = load > 1
  const delay = overloaded ? BASE_MS * load * load : BASE_MS
  const fails = overloaded && Math.random() < (capacityInFlight - CAPACITY) / capacityInFlight
  let done = false
  const finish = () => {
    if (done) return
    done = true
    capacityInFlight--
  }
  // A client that gives up (an attempt timeout, a losing hedge) frees its slot at once.
  res.once('close', finish)
  setTimeout(() => {
    finish()
    if (fails) unavailable(res)
    else ok(res)
  }, delay)
}

const server = http.createServer((req, res) => {
  // Drain any request body so the connection stays reusable; a request with
  // a body is answered once it has all come, as a real service does (a Node
  // 24 server closes the connection of one answered before then).
  req.resume()
  if (req.headers['content-length'] > 0 || req.headers['transfer-encoding'] !== undefined) req.once('end', () => route(req, res))
  else route(req, res)
})

function route (req, res) {
  switch (req.url) {
    case '/':
      ok(res)
      return
    case '/flaky':
      if (flakyCount++ % 2 === 0) unavailable(res)
      else ok(res)
      return
    case '/tail':
      if (Math.random() < TAIL_SHARE) setTimeout(ok, TAIL_MIN_MS + Math.random() * TAIL_SPREAD_MS, res)
      else ok(res)
      return
    case '/capacity':
      capacity(req, res)
      return
    case '/__stats':
    case '/__stats?reset': {
      const body = JSON.stringify({ peakInFlight, requests: capacityRequests })
      if (req.url === '/__stats?reset') {
        peakInFlight = capacityInFlight
        capacityRequests = 0
      }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(body)
      return
    }
    default:
      res.writeHead(404)
      res.end()
  }
}

// Clients keep their sockets for the whole run; do not close them under a slow round.
server.keepAliveTimeout = 120_000
server.headersTimeout = 121_000
server.maxRequestsPerSocket = 0

server.listen(0, '127.0.0.1', () => {
  process.send({ port: server.address().port, pid: process.pid })
})

process.on('SIGTERM', () => process.exit(0))
process.on('disconnect', () => process.exit(0))
