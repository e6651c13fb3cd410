import { randomUUID } from 'node:crypto'
import type { Dispatcher } from 'undici'
import type { TokenSource, TokenUse } from './auth'
import { encodeForm, FORM_CONTENT_TYPE, FreshBody, makeBody, withBodyHeaders } from './body'
import { AuthenticationError, InvalidRequestError } from '../errors'
import { type HeaderList, hasHeader, mergeHeaderLists, toHeaderList, withoutHeader } from '../headers'
import { DEFAULT_RETRY, MAX_REDIRECTS, type ResolvedClientOptions, type ResolvedHedge, type ResolvedRetry, resolveHedge, resolveRetry } from '../options/resolve'
import type { InboundContext } from '../inbound/request-context'
import type { CallOptions } from '../types'
import { queryString, sendablePath } from '../url'
import { checkDuration, checkInteger, checkKeys, describe, type Fail, hasForbiddenHeaderChars } from '../validate'

/** Everything a call sends and decides by, made once from the caller's arguments. */
export interface PreparedRequest {
  readonly method: string
  /** The path as the caller gave it, for errors and logs. */
  readonly path: string
  /** What undici is given: origin, method, path, headers (a flat list, lower-case names) and body, the fields an attempt copies when it needs its own. */
  readonly options: Dispatcher.DispatchOptions & { headers: HeaderList }
  /** A stream body is sent once: no retry, no hedge, no resend. */
  readonly replayable: boolean
  /** A body made again for each attempt (a `FormData`, a body function); `null` for the rest. */
  readonly freshBody: FreshBody | null
  /** Redirects the call may still follow. */
  readonly followRedirects: number
  /** The `auth.token` bearer the request carries, until its one resend after a 401; `null` for none. */
  readonly tokenUse: TokenUse | null
  readonly hasIdempotencyKey: boolean
  readonly retry: ResolvedRetry | false
  readonly hedge: ResolvedHedge | false
  readonly timeout: number
  readonly totalTimeout: number
  readonly signal: AbortSignal | undefined
  /** The inbound request the call was made for: its logger, its headers. */
  readonly inbound: InboundContext | undefined
  /** When the inbound request's deadline passes (client clock ms), unless the call opted out. */
  readonly deadlineAt: number | undefined
  /** The header to forward the deadline on, unless the call set it itself; `undefined` for none. */
  readonly deadlineHeader: string | undefined
}

const CALL_OPTIONS = ['query', 'headers', 'json', 'form', 'body', 'signal', 'timeout', 'totalTimeout', 'retry', 'idempotencyKey', 'hedge', 'deadline', 'followRedirects']
const REQUEST_OPTIONS = [...CALL_OPTIONS, 'method', 'path']
const HEDGED_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])
const JSON_CONTENT_TYPE = 'application/json'
const NO_HEADERS: HeaderList = []
const BODY_OPTIONS = ['json', 'form', 'body'] as const

function isAbortSignal (value: unknown): value is AbortSignal {
  return typeof value === 'object' && value !== null && typeof (value as AbortSignal).addEventListener === 'function' && 'aborted' in value
}

/** The inbound headers a call carries (request id, propagated headers) under its own. */
function withInboundHeaders (headers: HeaderList, inbound: InboundContext | undefined, settings: ResolvedClientOptions): HeaderList {
  if (inbound === undefined) return headers
  return mergeHeaderLists(headers, settings.propagateRequestId ? inbound.withRequestId : inbound.propagatedOnly)
}

/** The header to forward the deadline on, unless the call's own headers (not the defaults) set it. */
function deadlineHeaderFor (inbound: InboundContext | undefined, headers: HeaderList): string | undefined {
  const header = inbound?.deadlineHeader
  return header === undefined || inbound?.deadlineAt === undefined || hasHeader(headers, header) ? undefined : header
}

/**
 * Turns a call's arguments into a `PreparedRequest`, or throws
 * `InvalidRequestError` naming what cannot be sent. A call without options
 * takes the client's settings as they are: only its path and the inbound
 * context are looked at. The result is built in one place for both.
 */
export function prepareRequest (settings: ResolvedClientOptions, method: string, path: string, options: CallOptions | undefined, inbound: InboundContext | undefined, isRequest: boolean): PreparedRequest {
  const fail: Fail = (option, reason) => {
    throw new InvalidRequestError({ clientName: settings.name, method, path: String(path) }, `${option} ${reason}`)
  }
  let sendPath: string
  try {
    sendPath = settings.basePath + sendablePath(path)
  } catch (error) {
    // sendablePath() throws only a PathRefusal, whose message says why.
    throw new InvalidRequestError({ clientName: settings.name, method, path: String(path) }, (error as Error).message)
  }
  let headers = settings.defaultHeaders
  let ownHeaders = NO_HEADERS
  let body: Dispatcher.DispatchOptions['body']
  let replayable = true
  let freshBody: FreshBody | null = null
  let followRedirects = settings.followRedirects
  let retry = settings.retry
  let hedge = HEDGED_METHODS.has(method) ? settings.hedge : false
  let totalTimeout = settings.totalTimeout
  let timeout = Math.min(settings.timeout, totalTimeout)
  let signal: AbortSignal | undefined
  let followed = inbound
  // A call without options takes the client's settings as they are.
  if (options !== undefined) {
    if (typeof options !== 'object' || options === null) fail('options', `must be an object, got ${describe(options)}`)
    checkKeys(options, isRequest ? REQUEST_OPTIONS : CALL_OPTIONS, '', (option) => fail(option, `is not a call option (expected one of ${CALL_OPTIONS.join(', ')})`))

    if (options.query !== undefined) {
      if (typeof options.query !== 'object' || options.query === null) fail('query', `must be an object, got ${describe(options.query)}`)
      const query = queryString(options.query)
      if (query !== '') sendPath += sendPath.includes('?') ? `&${query.slice(1)}` : query
    }

    if (options.headers !== undefined) ownHeaders = toHeaderList(options.headers, 'headers', fail)
    if (ownHeaders.length > 0) headers = mergeHeaderLists(ownHeaders, headers)

    const bodyOption = options.json !== undefined ? 'json' : options.form !== undefined ? 'form' : options.body !== undefined ? 'body' : undefined
    if (bodyOption !== undefined) {
      if ((options.form !== undefined ? 1 : 0) + (options.body !== undefined ? 1 : 0) + (bodyOption === 'json' ? 1 : 0) > 1) {
        fail(BODY_OPTIONS.filter((name) => options[name] !== undefined).join(' and '), 'cannot be used together: give at most one of json, form and body')
      }
      if (method === 'GET' || method === 'HEAD') fail(bodyOption, `cannot be sent with ${method}`)
      const setContentType = !hasHeader(headers, 'content-type')
      if (bodyOption === 'json') {
        // The common case, without a MadeBody.
        body = jsonText(options.json, fail)
        if (setContentType) headers = [...headers, 'content-type', JSON_CONTENT_TYPE]
      } else {
        const made = bodyOption === 'form'
          ? { body: encodeForm(options.form, 'form', fail), contentType: FORM_CONTENT_TYPE, contentLength: undefined, replayable: true }
          : makeBody(options.body, 'body', fail, true)
        if (made === null) {
          freshBody = new FreshBody(options.body as FormData | (() => unknown), setContentType, { clientName: settings.name, method, path })
        } else {
          body = made.body
          replayable = made.replayable
          headers = withBodyHeaders(headers, made, setContentType)
        }
      }
    }

    if (options.idempotencyKey !== undefined && !hasHeader(headers, 'idempotency-key')) {
      const key = options.idempotencyKey === true ? randomUUID() : options.idempotencyKey
      if (typeof key !== 'string' || key === '' || hasForbiddenHeaderChars(key)) {
        fail('idempotencyKey', `must be a non-empty string without CR/LF, or true, got ${describe(options.idempotencyKey)}`)
      }
      headers = [...headers, 'idempotency-key', key]
    }

    signal = options.signal
    if (signal !== undefined && !isAbortSignal(signal)) fail('signal', `must be an AbortSignal, got ${describe(signal)}`)
    if (options.totalTimeout !== undefined) totalTimeout = checkDuration(options.totalTimeout, 'totalTimeout', fail)
    // A call's own timeout may exceed its total: the total then ends the attempt.
    timeout = options.timeout === undefined ? Math.min(settings.timeout, totalTimeout) : checkDuration(options.timeout, 'timeout', fail)
    if (options.retry !== undefined) retry = resolveRetry(options.retry, settings.retry === false ? DEFAULT_RETRY : settings.retry, 'retry', fail)
    if (options.hedge !== undefined) {
      if (!HEDGED_METHODS.has(method) && options.hedge !== false) fail('hedge', `applies to GET, HEAD and OPTIONS only, not ${method}`)
      hedge = resolveHedge(options.hedge, settings.hedge, 'hedge', fail)
    }
    if (options.followRedirects !== undefined) followRedirects = checkInteger(options.followRedirects, 'followRedirects', fail, 0, MAX_REDIRECTS)
    if (options.deadline !== undefined && options.deadline !== false) fail('deadline', `must be false (to ignore the inbound deadline), got ${describe(options.deadline)}`)
    if (options.deadline === false) followed = undefined
  }
  headers = withInboundHeaders(headers, inbound, settings)

  // The one result, with or without options: an inbound header (a forwarded Idempotency-Key) counts as the call's own.
  return {
    method,
    path,
    options: { origin: settings.origins[0], method, path: sendPath, headers, body },
    replayable,
    freshBody,
    followRedirects,
    tokenUse: null,
    hasIdempotencyKey: hasHeader(headers, 'idempotency-key'),
    retry,
    hedge,
    timeout,
    totalTimeout,
    signal,
    inbound,
    deadlineAt: followed?.deadlineAt,
    deadlineHeader: deadlineHeaderFor(followed, ownHeaders)
  }
}

/**
 * `request` sent with `token` as its bearer (a request with its own
 * `authorization` is never given one: it wins, and a 401 is its own). A
 * `resend` (the one after a 401) replaces the old token and is not resent again.
 */
export function withToken (request: PreparedRequest, source: TokenSource, token: string, resend: boolean): PreparedRequest {
  const headers = resend ? withoutHeader(request.options.headers, 'authorization') : request.options.headers.slice()
  headers.push('authorization', `Bearer ${token}`)
  return { ...request, options: { ...request.options, headers }, tokenUse: resend ? null : { source, token } }
}

/**
 * Starts a request under `auth.token`'s bearer: at once while a token is
 * known, else once the function has given one (`late`), or rejects with
 * `AuthenticationError` when it fails. A request with its own
 * `authorization` is started as it is.
 */
export function startAuthorized<T> (tokens: TokenSource, request: PreparedRequest, clientName: string, start: (request: PreparedRequest, late: boolean) => Promise<T>): Promise<T> {
  if (hasHeader(request.options.headers, 'authorization')) return start(request, false)
  const token = tokens.current
  if (token !== null) return start(withToken(request, tokens, token, false), false)
  return tokens.token().then((token) => start(withToken(request, tokens, token, false), true), (error: unknown) => {
    throw new AuthenticationError({ clientName, method: request.method, path: request.path, attempts: 0, cause: error })
  })
}

function jsonText (value: unknown, fail: Fail): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (error) {
    fail('json', `cannot be serialized: ${(error as Error).message}`)
  }
  if (text === undefined) fail('json', `cannot be serialized: ${describe(value)}`)
  return text
}
