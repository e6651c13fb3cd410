import type { Query, QueryValue } from './types'
import { describe, type Fail } from './validate'

export interface BaseUrl {
  /** `protocol//host:port` of each replica, what its undici Pool connects to. */
  origins: string[]
  /** The base path without its trailing slash, `''` for none; the same on every replica. */
  basePath: string
}

interface ParsedUrl {
  origin: string
  basePath: string
}

function parseOne (value: unknown, path: string, fail: Fail): ParsedUrl {
  // A URL object is judged by its serialization, which keeps an empty `?` or `#`.
  const text = value instanceof URL ? value.href : value
  if (typeof text !== 'string' || text === '') fail(path, `must be an http: or https: URL, got ${describe(value)}`)
  let url: URL
  try {
    url = new URL(text)
  } catch {
    fail(path, `is not a valid URL: ${JSON.stringify(text)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') fail(path, `must use http: or https:, got ${url.protocol}`)
  if (url.search !== '' || text.includes('?')) fail(path, 'must not have a query string')
  if (url.hash !== '' || text.includes('#')) fail(path, 'must not have a fragment')
  if (url.username !== '' || url.password !== '') fail(path, 'must not carry credentials; send them with defaultHeaders')
  const basePath = url.pathname.endsWith('/') ? url.pathname.slice(0, -1) : url.pathname
  return { origin: url.origin, basePath }
}

/**
 * Parses `baseUrl`: a string or `URL`, or a non-empty array of them naming
 * replicas of one service (each with the same base path, none twice).
 */
export function parseBaseUrl (value: unknown, path: string, fail: Fail): BaseUrl {
  if (!Array.isArray(value)) {
    const { origin, basePath } = parseOne(value, path, fail)
    return { origins: [origin], basePath }
  }
  if (value.length === 0) fail(path, 'must name at least one URL')
  const parsed = value.map((item: unknown, i: number) => parseOne(item, `${path}.${i}`, fail))
  const basePath = parsed[0].basePath
  const origins: string[] = []
  for (let i = 0; i < parsed.length; i++) {
    if (parsed[i].basePath !== basePath) {
      fail(path, `replicas must share one base path: entry 0 has ${JSON.stringify(basePath || '/')}, entry ${i} has ${JSON.stringify(parsed[i].basePath || '/')}`)
    }
    const seen = origins.indexOf(parsed[i].origin)
    if (seen !== -1) fail(path, `names ${parsed[i].origin} twice (entries ${seen} and ${i})`)
    origins.push(parsed[i].origin)
  }
  return { origins, basePath }
}

/** Why a path cannot be sent; `sendablePath()` throws it, the caller turns it into its own error. */
export class PathRefusal extends Error {
  override get name (): string {
    return 'PathRefusal'
  }
}

const SLASH = 47
const BACKSLASH = 92
const DOT = 46
const PERCENT = 37
const QUESTION = 63
const HASH = 35
const SEMICOLON = 59
const SPACE = 32
const DEL = 127

function hexValue (code: number): number {
  if (code >= 48 && code <= 57) return code - 48
  const lower = code | 32
  if (lower >= 97 && lower <= 102) return lower - 87
  return -1
}

/**
 * Non-ASCII characters that are refused rather than encoded: C1 controls,
 * Unicode white space, and invisible format characters (zero-width and
 * bidirectional controls) that make a logged path read unlike the one sent.
 */
function isRefusedNonAscii (code: number): boolean {
  if (code <= 0xa0) return true // U+0080..U+009F C1 controls, U+00A0 NBSP
  if (code === 0x1680 || code === 0x180e) return true
  if (code >= 0x2000 && code <= 0x200f) return true // spaces, zero-width, LRM/RLM
  if (code >= 0x2028 && code <= 0x202f) return true // line/paragraph separators, bidi embeddings, NNBSP
  if (code >= 0x205f && code <= 0x206f) return true // MMSP, word joiner, bidi isolates
  return code === 0x3000 || code === 0xfeff
}

function refuse (reason: string, path: string): never {
  throw new PathRefusal(`path ${reason}: ${JSON.stringify(path.length > 200 ? path.slice(0, 200) + '…' : path)}`)
}

/**
 * The path to put on the request line, or a `PathRefusal` when it could
 * leave the client's origin or base path, or break the request line.
 *
 * It must start with a single `/`. Refused anywhere: a backslash, ASCII
 * controls (CR, LF, NUL, ...), a space (encode it as `%20`: a space splits
 * the request line), a `#` (a fragment is never sent, so what follows would
 * be lost; encode it as `%23` when it is data), C1 controls, Unicode white
 * space and invisible format characters. Refused in the path part (before
 * `?`): a `.` or `..` segment, also percent-encoded (`%2e`) and also between
 * encoded separators (`%2f`, `%5c`), which a server may decode before it
 * resolves dot segments; and `..;` (a segment some servers read as `..`).
 * A `%` must start a valid `%XX` escape: a lone `%` is refused rather than
 * encoded, since it usually means the path was built from text that was
 * never encoded, and guessing which characters were meant literally could
 * change which resource is named. Valid escapes are kept as they are; other
 * non-ASCII characters are percent-encoded as UTF-8 (`/users/José` →
 * `/users/Jos%C3%A9`).
 *
 * Runs on every call: one pass over the characters, no regex, and a path
 * that needs no encoding is returned as the same string.
 */
export function sendablePath (path: unknown): string {
  if (typeof path !== 'string') throw new PathRefusal(`path must be a string, got ${describe(path)}`)
  if (path.charCodeAt(0) !== SLASH) refuse('must start with "/"', path)
  const second = path.charCodeAt(1)
  if (second === SLASH || second === BACKSLASH) refuse('must not start with "//" or "/\\" (it would name another host)', path)
  let inQuery = false
  let needsEncoding = false
  // Dot units ('.' or '%2e') in the current segment so far; -1 once it holds anything else.
  let dots = 0
  for (let i = 1; i < path.length; i++) {
    const code = path.charCodeAt(i)
    if (code < 128) {
      if (code <= SPACE || code === DEL) refuse('must not contain spaces or control characters (encode a space as %20)', path)
      if (code === BACKSLASH) refuse('must not contain a backslash', path)
      if (code === HASH) refuse('must not contain a fragment ("#"); encode it as %23 when it is data', path)
      if (code === PERCENT) {
        const high = hexValue(path.charCodeAt(i + 1))
        const low = hexValue(path.charCodeAt(i + 2))
        if (high === -1 || low === -1) refuse('has a "%" that does not start a %XX escape (write a literal "%" as %25)', path)
        i += 2
        if (inQuery) continue
        const byte = high * 16 + low
        if (byte === DOT) {
          if (dots !== -1) dots++
        } else if (byte === SLASH || byte === BACKSLASH) {
          if (dots === 1 || dots === 2) refuse('must not contain a "." or ".." segment', path)
          dots = 0
        } else {
          dots = -1
        }
        continue
      }
      if (inQuery) continue
      if (code === DOT) {
        if (dots !== -1) dots++
      } else if (code === SLASH || code === QUESTION) {
        if (dots === 1 || dots === 2) refuse('must not contain a "." or ".." segment', path)
        dots = 0
        inQuery = code === QUESTION
      } else if (code === SEMICOLON && (dots === 1 || dots === 2)) {
        refuse('must not contain a "." or ".." segment', path)
      } else {
        dots = -1
      }
      continue
    }
    if (isRefusedNonAscii(code)) refuse('must not contain control characters, Unicode white space or invisible format characters', path)
    if (code >= 0xd800 && code <= 0xdfff) {
      // A surrogate must be the high half of a pair; anything else cannot be encoded as UTF-8.
      const next = path.charCodeAt(i + 1)
      if (code >= 0xdc00 || !(next >= 0xdc00 && next <= 0xdfff)) refuse('is not well-formed UTF-16 (a lone surrogate)', path)
      i++
    }
    needsEncoding = true
    dots = -1
  }
  if (!inQuery && (dots === 1 || dots === 2)) refuse('must not contain a "." or ".." segment', path)
  return needsEncoding ? encodeNonAscii(path) : path
}

/** Percent-encodes (UTF-8) every non-ASCII character, keeping the rest as it is. */
function encodeNonAscii (path: string): string {
  let out = ''
  let start = 0
  for (let i = 0; i < path.length; i++) {
    if (path.charCodeAt(i) < 128) continue
    if (start < i) out += path.slice(start, i)
    const end = path.charCodeAt(i) >= 0xd800 && path.charCodeAt(i) <= 0xdbff ? i + 2 : i + 1
    out += encodeURIComponent(path.slice(i, end))
    i = end - 1
    start = end
  }
  return out + path.slice(start)
}

function appendPair (out: string, key: string, value: QueryValue): string {
  if (value === undefined) return out
  const pair = `${key}=${value === null ? '' : encodeURIComponent(String(value))}`
  return out === '' ? pair : `${out}&${pair}`
}

/** `?a=1&b=2&b=3` for `{ a: 1, b: [2, 3] }`; `''` when nothing is left. */
export function queryString (query: Query): string {
  let out = ''
  for (const key of Object.keys(query)) {
    const value = query[key]
    const encodedKey = encodeURIComponent(key)
    if (Array.isArray(value)) {
      for (const item of value) out = appendPair(out, encodedKey, item)
    } else {
      out = appendPair(out, encodedKey, value as QueryValue)
    }
  }
  return out === '' ? '' : `?${out}`
}
