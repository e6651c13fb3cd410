import { test } from 'tap'
import { PathRefusal, sendablePath } from '../lib/url'

function refusal (path: unknown): PathRefusal {
  try {
    sendablePath(path)
  } catch (error) {
    if (error instanceof PathRefusal) return error
    throw error
  }
  throw new Error(`${JSON.stringify(path)} was not refused`)
}

test('paths that could leave the origin or the base path are refused, with the reason', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['not a string', 42, /must be a string/],
    ['empty', '', /must start with "\/"/],
    ['absolute URL', 'http://evil/x', /must start with "\/"/],
    ['protocol-relative', '//evil/x', /"\/\/"/],
    ['slash backslash', '/\\evil/x', /"\/\/" or "\/\\"/],
    ['backslash inside', '/a\\b', /backslash/],
    ['CR', '/a\rb', /control characters/],
    ['LF', '/a\nb', /control characters/],
    ['NUL', '/a\u0000b', /control characters/],
    ['DEL', '/a\u007fb', /control characters/],
    ['tab', '/a\tb', /control characters/],
    ['space: the caller encodes it', '/a b', /encode a space as %20/],
    ['space in the query', '/a?q=x y', /spaces/],
    ['C1 control U+0085 (NEL)', '/a\u0085b', /control characters/],
    ['C1 control U+009B (CSI)', '/a\u009bb', /control characters/],
    ['NBSP', '/a\u00a0b', /white space/],
    ['ideographic space', '/a\u3000b', /white space/],
    ['line separator', '/a\u2028b', /white space/],
    ['zero-width space', '/a\u200bb', /invisible/],
    ['right-to-left override', '/a\u202eb', /invisible/],
    ['byte order mark', '/a\ufeffb', /invisible/],
    ['lone high surrogate', '/a\ud800b', /lone surrogate/],
    ['lone low surrogate', '/a\udc00', /lone surrogate/],
    ['fragment', '/a#top', /fragment/],
    ['fragment after a query', '/a?q=1#top', /fragment/],
    ['dot segment', '/a/./b', /"\." or "\.\." segment/],
    ['dot-dot segment', '/a/../b', /segment/],
    ['dot-dot at the start', '/../admin', /segment/],
    ['dot-dot at the end', '/a/..', /segment/],
    ['dot at the end', '/a/.', /segment/],
    ['dot-dot before a query', '/a/..?x=1', /segment/],
    ['encoded dot-dot, lower case', '/%2e%2e/admin', /segment/],
    ['encoded dot-dot, upper case', '/%2E%2E/admin', /segment/],
    ['half-encoded dot-dot', '/.%2e/admin', /segment/],
    ['half-encoded dot-dot, the other half', '/%2e./admin', /segment/],
    ['encoded dot', '/a/%2e/b', /segment/],
    ['dot-dot then an encoded slash', '/..%2fadmin', /segment/],
    ['dot-dot then an encoded upper-case slash', '/a/..%2Fadmin', /segment/],
    ['dot-dot between encoded slashes', '/a%2f..%2fadmin', /segment/],
    ['dot-dot then an encoded backslash', '/..%5cadmin', /segment/],
    ['encoded dot-dot then an encoded backslash', '/%2e%2e%5Cadmin', /segment/],
    ['dot-dot with a path parameter', '/..;/admin', /segment/],
    ['lone percent', '/100%', /%XX escape/],
    ['percent with one digit', '/a%2', /%XX escape/],
    ['percent with a non-hex digit', '/a%zz', /%XX escape/],
    ['lone percent in the query', '/a?discount=10%', /%XX escape/]
  ]
  for (const [description, path, reason] of cases) {
    const error = refusal(path)
    t.type(error, PathRefusal, description)
    t.match(error.message, reason, description)
  }
})

test('a refusal is its own error type', async (t) => {
  t.equal(refusal('//x').name, 'PathRefusal')
  t.ok(refusal('//x') instanceof Error)
})

test('a long refused path is quoted shortened', async (t) => {
  const error = refusal(`/${'a'.repeat(500)}\n`)
  t.ok(error.message.length < 300, error.message.length.toString())
  t.match(error.message, /…/)
})

test('safe paths pass as they are', async (t) => {
  const paths = [
    '/',
    '/charge',
    '/users/42/orders',
    '/a/b/',
    '/.well-known/openid-configuration',
    '/.hidden',
    '/a./b',
    '/a/.../b',
    '/a/..b',
    '/file.tar.gz',
    '/%2F%2Fhost',
    '/a%2fb',
    '/%2e%2e%2e',
    '/Jos%C3%A9',
    '/a%20b',
    '/search?q=a%20b&x=../..&y=.',
    '/a;v=1/b',
    "/a-b_c~d!$&'()*+,=:@",
    '/path?'
  ]
  for (const path of paths) t.equal(sendablePath(path), path, path)
})

test('other non-ASCII characters are percent-encoded as UTF-8; escapes are left alone', async (t) => {
  const cases: Array<[string, string]> = [
    ['/users/José', '/users/Jos%C3%A9'],
    ['/users/José/%41', '/users/Jos%C3%A9/%41'],
    ['/日本', '/%E6%97%A5%E6%9C%AC'],
    ['/emoji/😀/x', '/emoji/%F0%9F%98%80/x'],
    ['/a?q=é', '/a?q=%C3%A9'],
    ['/ü', '/%C3%BC'],
    ['/\u00a1', '/%C2%A1']
  ]
  for (const [path, expected] of cases) t.equal(sendablePath(path), expected, path)
})

test('a non-ASCII character does not hide a dot segment', async (t) => {
  t.equal(sendablePath('/é./x'), '/%C3%A9./x')
  t.equal(sendablePath('/..é/x'), '/..%C3%A9/x')
  t.match(refusal('/é/../x').message, /segment/)
})
