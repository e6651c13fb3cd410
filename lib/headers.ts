import type { Headers } from './types'
import { describe, type Fail, hasForbiddenHeaderChars, isHeaderName, isPlainObject } from './validate'

/**
 * Headers travel as undici's flat list, `[name, value, name, value, ...]`,
 * with lower-case names: merging and lookups stay simple and undici takes the
 * list as it is.
 */
export type HeaderList = string[]

/**
 * Validates a header record and turns it into a list. A call's `undefined`
 * values are left out; with `refuseUndefined` (default headers) one fails,
 * since it is almost always an unset environment variable.
 */
/** Why an `upgrade` header is refused: undici hands an upgraded socket away, and a client call cannot own it. */
export const UPGRADE_REFUSED = 'asks for a protocol upgrade, which a client call cannot make (undici would hand the socket away)'

export function toHeaderList (headers: unknown, path: string, fail: Fail, refuseUndefined = false): HeaderList {
  if (!isPlainObject(headers)) fail(path, `must be an object of header names to values, got ${describe(headers)}`)
  const list: HeaderList = []
  for (const name of Object.keys(headers)) {
    const value = (headers as Headers)[name]
    if (value === undefined) {
      if (refuseUndefined) fail(`${path}.${name}`, 'is undefined (an unset environment variable?); leave the header out or give it a string')
      continue
    }
    if (!isHeaderName(name)) fail(`${path}.${name}`, 'is not a valid header name')
    const lower = name.toLowerCase()
    if (lower === 'upgrade') fail(`${path}.${name}`, UPGRADE_REFUSED)
    if (Array.isArray(value)) {
      for (const item of value) pushValue(list, lower, item, `${path}.${name}`, fail)
    } else {
      pushValue(list, lower, value, `${path}.${name}`, fail)
    }
  }
  return list
}

function pushValue (list: HeaderList, name: string, value: unknown, path: string, fail: Fail): void {
  if (typeof value === 'number' && Number.isFinite(value)) {
    list.push(name, String(value))
    return
  }
  if (typeof value !== 'string') fail(path, `must be a string, got ${describe(value)}`)
  if (hasForbiddenHeaderChars(value)) fail(path, 'must not contain CR, LF or NUL characters')
  list.push(name, value)
}

export function hasHeader (list: HeaderList, name: string): boolean {
  for (let i = 0; i < list.length; i += 2) {
    if (list[i] === name) return true
  }
  return false
}

/** `first`'s entries, then those of `second` whose names `first` does not have. */
export function mergeHeaderLists (first: HeaderList, second: HeaderList): HeaderList {
  if (first.length === 0) return second
  if (second.length === 0) return first
  const merged = first.slice()
  for (let i = 0; i < second.length; i += 2) {
    if (!hasHeader(first, second[i])) merged.push(second[i], second[i + 1])
  }
  return merged
}

/** A copy of `list` without the entries named `name`. */
export function withoutHeader (list: HeaderList, name: string): HeaderList {
  const kept: HeaderList = []
  for (let i = 0; i < list.length; i += 2) {
    if (list[i] !== name) kept.push(list[i], list[i + 1])
  }
  return kept
}
