import { withoutHeader } from '../headers'
import type { PreparedRequest } from './prepare'
import { sendablePath } from '../url'

/**
 * Where a redirect leads, decided once its response is in: the next
 * request, or `null` when the redirect is not followed and the call resolves
 * with it. A `Location` is followed only to the origin that answered and
 * under the client's base path, through the same checks a call's own path
 * passes (no `.` or `..` segment, also encoded; no `//host`, backslash or
 * control character).
 */

/** A redirect the caller may follow, and the path it came from, as the caller would write it. */
export interface Redirected {
  readonly request: PreparedRequest
  /** Relative to the base path, with the `Location`'s query. */
  readonly path: string
}

const ABSOLUTE = /^https?:\/\/[^/?#\\]*/i
const SCHEME = /^[a-z][a-z\d+.-]*:/i
/** Headers that describe a body: dropped with it when a redirect turns the call into a GET (as fetch does). */
const BODY_HEADERS = ['content-type', 'content-length', 'content-encoding', 'content-language', 'content-location']

/** 301, 302, 303, 307 or 308. */
export function isRedirect (statusCode: number): boolean {
  return statusCode === 301 || statusCode === 302 || statusCode === 303 || statusCode === 307 || statusCode === 308
}

/**
 * The path (from the origin, with its query) that `location` names when it
 * stays on `origin`; `null` when it leaves it or could leave the base path.
 * `current` is the path the redirect answered, relative references resolve
 * against it.
 */
export function locationPath (location: unknown, origin: string, current: string): string | null {
  if (typeof location !== 'string') return null
  const hash = location.indexOf('#')
  const reference = hash < 0 ? location : location.slice(0, hash)
  let path: string
  if (reference.startsWith('/')) {
    path = reference
  } else if (SCHEME.test(reference)) {
    const authority = ABSOLUTE.exec(reference)
    if (authority === null) return null
    let url: URL
    try {
      url = new URL(reference)
    } catch {
      return null
    }
    if (url.origin !== origin || url.username !== '' || url.password !== '') return null
    const rest = reference.slice(authority[0].length)
    path = rest.startsWith('/') ? rest : `/${rest}`
  } else {
    if (reference === '' || !sendable(`/${reference}`)) return null
    // A relative reference ('next', '?page=2') resolves against the answering path; it has no dot segment to climb with.
    const url = new URL(reference, `${origin}${current}`)
    path = url.pathname + url.search
  }
  return sendable(path) ? sendablePath(path) : null
}

function sendable (path: string): boolean {
  try {
    sendablePath(path)
    return true
  } catch {
    return false
  }
}

/** `path` as the caller would write it under `basePath`, or `null` when it is outside. */
export function underBasePath (path: string, basePath: string): string | null {
  if (basePath === '') return path
  if (!path.startsWith(basePath)) return null
  const rest = path.slice(basePath.length)
  if (rest === '') return '/'
  if (rest.startsWith('/')) return rest
  return rest.startsWith('?') ? `/${rest}` : null
}

/**
 * The request a redirect leads to. A 303 (unless it answers a HEAD), and a
 * 301 or 302 answering a POST, become a GET without a body; the others keep
 * the method and the body, which must then be one that can be sent again.
 */
export function redirectedRequest (request: PreparedRequest, statusCode: number, location: unknown, origin: string, basePath: string): Redirected | null {
  const sentPath = locationPath(location, origin, request.options.path)
  if (sentPath === null) return null
  const path = underBasePath(sentPath, basePath)
  if (path === null) return null
  const toGet = statusCode === 303 ? request.method !== 'HEAD' : (statusCode === 301 || statusCode === 302) && request.method === 'POST'
  const options = request.options
  if (!toGet) {
    if (!request.replayable) return null
    return {
      request: { ...request, options: { ...options, path: sentPath }, followRedirects: request.followRedirects - 1 },
      path
    }
  }
  let headers = options.headers
  for (const name of BODY_HEADERS) headers = withoutHeader(headers, name)
  return {
    request: {
      ...request,
      method: 'GET',
      options: { origin: options.origin, method: 'GET', path: sentPath, headers, body: undefined },
      replayable: true,
      freshBody: null,
      followRedirects: request.followRedirects - 1
    },
    path
  }
}
