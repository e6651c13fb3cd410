import { test } from 'tap'
import { isDrop } from '../lib/pipeline/outcome'

test('the adaptive limit\'s drops: a timeout, a refused or reset connection, a 429 or a 503', async (t) => {
  t.equal(isDrop(0, undefined, true), true, 'an attempt timeout')
  t.equal(isDrop(429, undefined, false), true)
  t.equal(isDrop(503, undefined, false), true)
  t.equal(isDrop(500, undefined, false), false, 'a 500 is an answer')
  t.equal(isDrop(200, undefined, false), false)
  t.equal(isDrop(0, Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }), false), true)
  t.equal(isDrop(0, Object.assign(new Error('reset'), { code: 'ECONNRESET' }), false), true)
  t.equal(isDrop(0, Object.assign(new Error('dns'), { code: 'ENOTFOUND' }), false), false, 'a name that does not resolve is no overload')
  t.equal(isDrop(0, new Error('no code'), false), false)
})
