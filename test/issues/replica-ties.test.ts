import { test } from 'tap'
import { createHttpClient } from '../../plugin'
import { startUpstream } from '../helpers/upstream'

// Power of two choices kept the earlier replica of the pair on a tie, so with
// calls one at a time (every replica idle) the second of two replicas, or the
// second of three, never got a request.
test('sequential calls reach every replica', async (t) => {
  const upstreams = await Promise.all([0, 1, 2].map(() => startUpstream((_req, res) => { res.end('ok') })))
  t.teardown(() => Promise.all(upstreams.map((upstream) => upstream.close())))
  const client = createHttpClient({ name: 'spread', baseUrl: upstreams.map((upstream) => upstream.url) })
  t.teardown(() => client.close())

  for (let i = 0; i < 60; i++) await (await client.get('/')).text()
  for (const [i, upstream] of upstreams.entries()) {
    // 60 calls over 3 replicas: each gets 20 on average; 5 is far below any fair share.
    t.ok(upstream.hits.length >= 5, `replica ${i} got ${upstream.hits.length} of 60 calls`)
  }
})
