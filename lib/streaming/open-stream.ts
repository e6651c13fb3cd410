import { Call, type CallHost } from '../pipeline/call'
import { type PreparedRequest, prepareRequest, startAuthorized } from '../pipeline/prepare'
import type { HttpResponse } from '../pipeline/response'
import { ClientClosedError, InvalidRequestError } from '../errors'
import type { InboundContext } from '../inbound/request-context'
import type { ResolvedClientOptions } from '../options/resolve'
import type { CallOptions, StreamOptions } from '../types'
import { checkDuration, checkInteger, checkKeys, checkObject, describe, type Fail, isHeaderName } from '../validate'
import { HttpStream } from './http-stream'
import { type StreamSettings, StreamCore } from './stream-core'

/** A line or event's bound when `maxResponseBytes` is not set. */
const DEFAULT_MAX_ITEM_BYTES = 1024 * 1024
const DEFAULT_MAX_RECONNECTS = 5
const RESUME_KEYS = ['maxReconnects']

/** What a stream is opened with: the host of its calls and the client's settings. */
export interface StreamHost extends CallHost {
  readonly settings: ResolvedClientOptions
}

/**
 * Opens a stream through the whole pipeline, as a call: retries, the budget,
 * the breaker, replicas, hedging and the timeouts apply up to the commit
 * point, a 2xx's headers. A final answer that is not 2xx rejects with
 * `HttpStatusError` (its body's first KiB on `.body`).
 */
export function openStream (host: StreamHost, path: string, options: StreamOptions | undefined, inbound: InboundContext | undefined, now: number): Promise<HttpStream> {
  const settings = host.settings
  let method = 'GET'
  let callOptions: CallOptions | undefined = options
  let stream: StreamSettings = {
    idleTimeout: settings.idleTimeout,
    maxDuration: undefined,
    maxReconnects: false,
    maxItemBytes: settings.maxResponseBytes ?? DEFAULT_MAX_ITEM_BYTES
  }
  if (options !== undefined) {
    const fail: Fail = (option, reason) => {
      throw new InvalidRequestError({ clientName: settings.name, method, path: String(path) }, `${option} ${reason}`)
    }
    checkObject(options, 'options', fail)
    const { method: givenMethod, idleTimeout, maxDuration, resume, ...rest } = options
    if (givenMethod !== undefined) {
      if (typeof givenMethod !== 'string' || !isHeaderName(givenMethod)) fail('method', `must be an HTTP method name, got ${describe(givenMethod)}`)
      method = givenMethod.toUpperCase()
      if (method === 'CONNECT') fail('method', 'CONNECT cannot be streamed: it would hand the socket away')
    }
    stream = {
      idleTimeout: idleTimeout === undefined ? stream.idleTimeout : checkDuration(idleTimeout, 'idleTimeout', fail),
      maxDuration: maxDuration === undefined ? undefined : checkDuration(maxDuration, 'maxDuration', fail),
      maxReconnects: resolveResume(resume, fail),
      maxItemBytes: stream.maxItemBytes
    }
    callOptions = rest
  }
  const request = prepareRequest(settings, method, path, callOptions, inbound, false)
  const start = (request: PreparedRequest, late: boolean): Promise<HttpStream> => {
    if (late && host.closed) throw new ClientClosedError({ clientName: settings.name, method, path })
    const core = new StreamCore(host, request, stream)
    const call = new Call(host, request, late ? host.clock.now() : now)
    call.sink = core
    return call.start().then((response) => opened(core, response))
  }
  return host.tokens === null ? start(request, false) : startAuthorized(host.tokens, request, settings.name, start)
}

function resolveResume (value: unknown, fail: Fail): number | false {
  if (value === undefined || value === false) return false
  if (value === true) return DEFAULT_MAX_RECONNECTS
  const given = checkObject(value, 'resume', (option, reason) => fail(option, `${reason} (true, false or { maxReconnects })`))
  checkKeys(given, RESUME_KEYS, 'resume', fail)
  return given.maxReconnects === undefined ? DEFAULT_MAX_RECONNECTS : checkInteger(given.maxReconnects, 'resume.maxReconnects', fail, 1)
}

function opened (core: StreamCore, response: HttpResponse): HttpStream {
  core.attempts = response.attempts
  // Throws HttpStatusError, quoting the body the call has read.
  response.raiseForStatus()
  return HttpStream.open(core, response.statusCode, response.headers, response.attempts)
}
