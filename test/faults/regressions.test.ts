import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import { test } from 'tap'
import resilientHttp, { TimeoutError } from '../../plugin'
import '../helpers/fastify-types'
import { refusedPort, startFaultUpstream } from '../helpers/fault-upstream'

const execFileAsync = promisify(execFile)

// Found by the fault suite: the wait between two attempts was an unref'ed
// timer, and while a call waits no socket is open, so a script whose upstream
// refused the connection exited in the middle of the call, never settling it.
test('a call waiting to retry keeps the process alive until it settles', async (t) => {
  const port = await refusedPort()
  const script = `
    const { createHttpClient } = require('./plugin')
    const client = createHttpClient({ name: 'script', baseUrl: 'http://127.0.0.1:${port}', retry: { backoffInitialMs: 300, jitter: 'none' } })
    client.get('/').then(
      (res) => console.log('resolved', res.statusCode),
      (error) => console.log('rejected', error.code, error.attempts)
    ).finally(() => client.close())
  `
  const { stdout } = await execFileAsync(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: path.join(__dirname, '..', '..'),
    env: { PATH: process.env.PATH ?? '' },
    timeout: 60_000
  })
  t.equal(stdout.trim(), 'rejected FRH_UPSTREAM 3', 'the call ran all its attempts and settled')
})

// Found by the load test: undici closes the connection it hands a request to
// when that request was aborted while queued in the pool. Each attempt that
// timed out waiting for a connection then cost a healthy one, and under load
// the reconnects starved the pool (5,000 calls: a few hundred reached the
// upstream, the rest timed out).
test('attempts that time out while queued for a connection do not close it', async (t) => {
  const upstream = await startFaultUpstream({ slowMs: 400 })
  t.teardown(() => upstream.close())
  let connections = 0
  upstream.server.on('connection', () => { connections++ })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    clients: { one: { baseUrl: upstream.url, timeout: 5_000, retry: false, circuitBreaker: false, pool: { connections: 1 } } }
  })
  const client = app.httpClients.one

  const holder = client.get('/fault/slow')
  const queued = Array.from({ length: 5 }, () => client.get('/', { timeout: 50 }).then(() => null, (error: unknown) => error))
  const errors = await Promise.all(queued)
  t.ok(errors.every((error) => error instanceof TimeoutError), 'the queued calls time out')
  const held = await holder
  await held.text()
  const after = await client.get('/')
  await after.text()

  t.equal(after.statusCode, 200)
  t.equal(upstream.requests, 2, 'the timed-out requests were never sent')
  t.equal(connections, 1, 'one connection served everything')
})
