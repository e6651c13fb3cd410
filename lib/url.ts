import type { Query, QueryValue } from './types'
import { describe, type Fail } from './validate'

export interface BaseUrl {
  /** `protocol//host:port`, what the undici Pool connects to. */
  origins: string[]
  /** The base path without its trailing slash, `''` for none. */
  basePath: string
}

export function parseBaseUrl (value: unknown, path: string, fail: Fail): BaseUrl {
  if (typeof value !== 'string' || value === '') fail(path, `must be an http: or https: URL, got ${describe(value)}`)
  let url: URL
  try {
    url = new URL(value)
  } catch {
    fail(path, `is not a valid URL: ${JSON.stringify(value)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') fail(path, `must use http: or https:, got ${url.protocol}`)
  if (url.search !== '' || value.includes('?')) fail(path, 'must not have a query string')
  if (url.hash !== '' || value.includes('#')) fail(path, 'must not have a fragment')
  if (url.username !== '' || url.password !== '') fail(path, 'must not carry credentials; send them with defaultHeaders')
  const basePath = url.pathname.endsWith('/') ? url.pathname.slice(0, -1) : url.pathname
  return { origins: [url.origin], basePath }
}

/**
 * Why `path` could leave the client's origin or break the request line, or
 * `null` when it is safe. It must start with a single `/` and hold no
 * backslash, whitespace or control character. Runs on every call: one pass
 * over the characters, no regex.
 */
export function unsafePathReason (path: unknown): string | null {
  if (typeof path !== 'string') return `path must be a string, got ${describe(path)}`
  if (path.charCodeAt(0) !== 47) return `path must start with "/", got ${JSON.stringify(path)}`
  const second = path.charCodeAt(1)
  if (second === 47 || second === 92) return `path must not start with "//" or "/\\" (it would name another host): ${JSON.stringify(path)}`
  for (let i = 1; i < path.length; i++) {
    const code = path.charCodeAt(i)
    if (code <= 32 || code === 127) return `path must not contain whitespace or control characters: ${JSON.stringify(path)}`
    if (code === 92) return `path must not contain a backslash: ${JSON.stringify(path)}`
  }
  return null
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

/** A path that must not be sent. */
export class PathRefusal extends Error {}

/** The path to put on the request line, or a `PathRefusal`. */
export function sendablePath (path: unknown): string {
  const reason = unsafePathReason(path)
  if (reason !== null) throw new PathRefusal(reason)
  return path as string
}
