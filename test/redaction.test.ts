import { inspect } from 'node:util'
import pino from 'pino'
import { test } from 'tap'
import { createHttpClient } from '../plugin'
import { sendJson, startUpstream } from './helpers/upstream'

// API keys live in defaultHeaders: no view of a client shows their values.
const SECRET = 'sk_live_0123456789abcdef'

test('inspect, JSON and log lines of a client never show defaultHeaders values', async (t) => {
  let first = true
  const upstream = await startUpstream((_req, res) => {
    if (first) {
      first = false
      sendJson(res, 503, {})
      return
    }
    sendJson(res, 200, {})
  })
  t.teardown(() => upstream.close())
  const lines: string[] = []
  const logger = pino({ level: 'info' }, { write (line: string) { lines.push(line) } })
  const client = createHttpClient({
    name: 'payments',
    baseUrl: `${upstream.url}/v1`,
    logger,
    defaultHeaders: { 'x-api-key': SECRET, Authorization: `Bearer ${SECRET}` },
    retry: { backoffInitialMs: 1 }
  })
  t.teardown(() => client.close())

  const json = JSON.stringify(client)
  const shown = inspect(client, { depth: 10, showHidden: true })
  t.notMatch(json, SECRET)
  t.notMatch(shown, SECRET)
  t.same(JSON.parse(json).defaultHeaders, { 'x-api-key': '[redacted]', authorization: '[redacted]' })
  t.match(shown, /\[redacted\]/)
  t.match(shown, /payments/)

  const res = await client.get('/charge')
  t.equal(res.statusCode, 200)
  t.equal(upstream.hits[1].headers['x-api-key'], SECRET, 'the header is still sent')
  t.ok(lines.length > 0, 'the retry was logged')
  for (const line of lines) t.notMatch(line, SECRET)
})
