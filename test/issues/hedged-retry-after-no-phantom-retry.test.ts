import pino from 'pino'
import { test } from 'tap'
import { createHttpClient } from '../../plugin'
import { CHANNELS, type RetryEvent, type RetrySkippedEvent } from '../../lib/telemetry/events'
import { poolIdle, timedUpstream } from '../helpers/timed-upstream'
import { published } from '../helpers/wait'

// A hedged GET whose first attempt answered 503 with Retry-After (opening the
// circuit) while its hedge was still out, and whose hedge then answered 500:
// the call announced "retrying in 5 ms" (log line and retry event), took a
// budget token, and then never sent that retry, as the circuit was open.
test('the hedge\'s own failure decides the retry: no announced retry that is never sent', async (t) => {
  const upstream = await timedUpstream(t, (index) => index === 0
    ? { delayMs: 100, status: 503, headers: { 'retry-after': '1' } }
    : { delayMs: 300, status: 500 })
  const lines: Array<{ msg: string }> = []
  const logger = pino({ level: 'info' }, { write (line: string) { lines.push(JSON.parse(line) as { msg: string }) } })
  const client = createHttpClient({
    name: 'catalog',
    baseUrl: upstream.url,
    hedge: { delayMs: 10 },
    retry: { maxAttempts: 3, backoffInitialMs: 5, jitter: 'none', budget: false },
    logger
  })
  t.teardown(() => client.close())
  const retries = published<RetryEvent>(t, CHANNELS.retry)
  const skipped = published<RetrySkippedEvent>(t, CHANNELS.retrySkipped)

  const res = await client.get('/item')
  t.equal(res.statusCode, 500, 'the call ends with its last failure, the hedge\'s')
  t.equal(res.attempts, 2, 'the first try and its hedge')
  t.equal(upstream.hits.length, 2, 'nothing else was sent')
  t.same(retries, [], 'no retry announced')
  t.notOk(lines.some((line) => line.msg.startsWith('retrying')), 'no "retrying" log line')
  t.same(skipped.map((event) => [event.reason, event.skipped]), [['status 500', 'circuit']], 'the retry not made, and why')
  t.equal(client.stats().retries, 0)
  t.equal(client.stats().circuit, 'open', 'the first answer\'s Retry-After holds the circuit open')
  await poolIdle(client)
})
