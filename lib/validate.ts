/**
 * Small checks shared by option and call validation. Each returns the value
 * or throws through `fail(reason)`, which the caller turns into its own error.
 */

export type Fail = (option: string, reason: string) => never

export function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

export function describe (value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`
  if (typeof value === 'number') return `the number ${value}`
  return `a value of type ${typeof value}`
}

export function checkKeys (value: object, allowed: readonly string[], path: string, fail: Fail): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      fail(path === '' ? key : `${path}.${key}`, `unknown option (expected one of ${allowed.join(', ')})`)
    }
  }
}

export function checkObject (value: unknown, path: string, fail: Fail): Record<string, unknown> {
  if (!isPlainObject(value)) fail(path, `must be an object, got ${describe(value)}`)
  return value
}

export function checkBoolean (value: unknown, path: string, fail: Fail): boolean {
  if (typeof value !== 'boolean') fail(path, `must be a boolean, got ${describe(value)}`)
  return value
}

/** The largest delay a Node.js timer accepts. */
export const MAX_TIMER_MS = 2_147_483_647

export function checkDuration (value: unknown, path: string, fail: Fail, { allowZero = false } = {}): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, `must be a finite number of milliseconds, got ${describe(value)}`)
  if (allowZero ? value < 0 : value <= 0) fail(path, `must be ${allowZero ? '0 or more' : 'greater than 0'}, got ${value}`)
  if (value > MAX_TIMER_MS) fail(path, `must be at most ${MAX_TIMER_MS}, got ${value}`)
  return value
}

export function checkInteger (value: unknown, path: string, fail: Fail, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) fail(path, `must be an integer, got ${describe(value)}`)
  if (value < min || value > max) fail(path, `must be between ${min} and ${max}, got ${value}`)
  return value
}

export function checkNumber (value: unknown, path: string, fail: Fail, min: number, max = Infinity): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, `must be a finite number, got ${describe(value)}`)
  if (value < min) fail(path, `must be ${min} or more, got ${value}`)
  if (value > max) fail(path, `must be ${max} or less, got ${value}`)
  return value
}

// RFC 9110 token characters, the only ones allowed in a header name.
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

export function isHeaderName (name: string): boolean {
  return HEADER_NAME.test(name)
}

/** True when a header value could split the header block or smuggle a request (CR, LF or NUL). */
export function hasForbiddenHeaderChars (value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i)
    if (code === 13 || code === 10 || code === 0) return true
  }
  return false
}
