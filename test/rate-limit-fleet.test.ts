import { mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { test } from 'tap'
import { runChildThatMustExit } from './helpers/child-process'
import { startRedis } from './helpers/redis-server'
import { startUpstream } from './helpers/upstream'
import { eventually } from './helpers/wait'

// On the built package (`npm test` builds first), so that each instance starts in a moment.
const FIXTURE = path.join(__dirname, 'fixtures', 'rate-limit-fleet.js')

test('three Node processes share one limit through Redis, and one 429 pauses all three', async (t) => {
  const redis = await startRedis(t)
  const PER_SECOND = 60
  const BURST = 10
  const INSTANCES = 3
  // The default lease: max(1, floor(60 / 50)).
  const LEASE = 1
  const hits: number[] = []
  let pausedAt = 0
  const upstream = await startUpstream((_req, res) => {
    const now = Date.now()
    hits.push(now)
    if (hits.length === 60) {
      pausedAt = now
      res.writeHead(429, { 'retry-after': '2', 'content-length': 0 })
      res.end()
      return
    }
    res.end('ok')
  })
  t.teardown(() => upstream.close())

  const readyDir = mkdtempSync(path.join(tmpdir(), 'frh-fleet-'))
  t.teardown(() => rmSync(readyDir, { recursive: true, force: true }))
  // A slow Redis answer must not send an instance to its fallback here: this test is about the shared limit.
  const env = { UPSTREAM_URL: upstream.url, REDIS_PORT: String(redis.port), PER_SECOND: String(PER_SECOND), BURST: String(BURST), KEY: 'frh:test:fleet', SEND_TIMES: '1', READY_DIR: readyDir, DURATION_MS: '3500', REDIS_TIMEOUT_MS: '2000' }
  const children = Promise.all(Array.from({ length: INSTANCES }, () => runChildThatMustExit(t, [FIXTURE], { env, cwd: path.join(__dirname, '..') })))
  // Node starts slowly on a busy machine: the instances start together once all are ready.
  t.ok(await eventually(() => readdirSync(readyDir).length === INSTANCES, 30_000), 'the instances are ready')
  // Written aside and renamed: an instance that sees 'go' must never read it half-written (an empty start time ends its run at once).
  writeFileSync(path.join(readyDir, 'go.tmp'), String(Date.now() + 100))
  renameSync(path.join(readyDir, 'go.tmp'), path.join(readyDir, 'go'))
  const results = await children
  for (const result of results) t.equal(result.code, 0, result.stderr)
  const reports = results.map((result) => JSON.parse(result.stdout) as { sent: number, refused: number, sendTimes: number[] })
  t.equal(reports.reduce((sum, report) => sum + report.sent, 0), hits.length, 'every call the instances counted as sent reached the upstream')
  t.ok(reports.every((report) => report.sent > 10), `every instance had its share (${JSON.stringify(reports.map(({ sent, refused }) => ({ sent, refused })))})`)

  // Over any span: at most perSecond × span + burst + instances × lease. Measured on the moments the
  // instances handed their requests to undici (one machine, one wall clock): a busy machine delivers
  // evenly sent requests in bunches, so arrival times at the upstream would measure the scheduler.
  const sends = reports.flatMap((report) => report.sendTimes).sort((a, b) => a - b)
  t.equal(sends.length, hits.length, 'every request handed to undici reached the upstream')
  let worst = -Infinity
  for (let i = 0; i < sends.length; i++) {
    for (let j = i; j < sends.length; j++) {
      const allowed = PER_SECOND * (sends[j] - sends[i]) / 1000 + BURST + INSTANCES * LEASE
      worst = Math.max(worst, (j - i + 1) - allowed)
    }
  }
  t.ok(worst <= 1, `never over the bound when sent (at worst ${worst.toFixed(2)} over, for timer resolution)`)
  t.ok(hits.length >= 0.5 * PER_SECOND * 1.5, `the limit was used, not starved: ${hits.length} calls`)

  t.ok(pausedAt > 0, 'the upstream answered 429 with Retry-After: 2')
  // Every instance learns of the pause within 100 ms of the one that got the 429 telling Redis; on a
  // busy machine that one may read the answer late, and requests already sent arrive late: 400 ms.
  const during = hits.filter((at) => at > pausedAt + 400 && at < pausedAt + 2_000)
  t.equal(during.length, 0, 'from shortly after the 429 until its end, no instance sent anything')
  t.ok(hits.some((at) => at >= pausedAt + 2_000), 'they sent again after it')
})
