import type { AuthOptions } from '../types'
import { describe, type Fail, hasForbiddenHeaderChars, isPlainObject } from '../validate'

/** `auth` once validated: a fixed `authorization` value, or the function that gives a bearer token. */
export type ResolvedAuth =
  | { readonly kind: 'bearer' | 'basic', readonly header: string }
  | { readonly kind: 'token', readonly token: () => string | Promise<string> }

const SHAPES = 'one of { bearer }, { username, password } or { token }'

function checkText (value: unknown, path: string, fail: Fail): string {
  if (typeof value !== 'string') fail(path, `must be a string, got ${describe(value)}`)
  if (hasForbiddenHeaderChars(value)) fail(path, 'must not contain CR, LF or NUL characters')
  return value
}

/** Validates `auth`; `false` when it is not set. */
export function resolveAuth (value: unknown, path: string, fail: Fail): ResolvedAuth | false {
  if (value === undefined) return false
  if (!isPlainObject(value)) fail(path, `must be ${SHAPES}, got ${describe(value)}`)
  const given = value as Partial<Record<keyof AuthOptions | 'bearer' | 'username' | 'password' | 'token', unknown>>
  const keys = Object.keys(given).sort().join(',')
  if (keys === 'bearer') {
    const bearer = checkText(given.bearer, `${path}.bearer`, fail)
    if (bearer === '') fail(`${path}.bearer`, 'must not be empty')
    return Object.freeze({ kind: 'bearer', header: `Bearer ${bearer}` })
  }
  if (keys === 'password,username') {
    const username = checkText(given.username, `${path}.username`, fail)
    // RFC 7617: the user-id cannot contain a colon, which separates it from the password.
    if (username.includes(':')) fail(`${path}.username`, 'must not contain ":"')
    const password = checkText(given.password, `${path}.password`, fail)
    return Object.freeze({ kind: 'basic', header: `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}` })
  }
  if (keys === 'token') {
    if (typeof given.token !== 'function') fail(`${path}.token`, `must be a function returning a token (or a promise of one), got ${describe(given.token)}`)
    return Object.freeze({ kind: 'token', token: given.token as () => string | Promise<string> })
  }
  return fail(path, `must be ${SHAPES}, got the keys ${JSON.stringify(Object.keys(given))}`)
}
