import { inspect } from 'node:util'
import { Call } from '../pipeline/call'
import { type ClientInternals, ClientCore } from './client-core'
import { ClientClosedError, InvalidOptionsError, InvalidRequestError } from '../errors'
import { type Logger, silentLogger } from '../logger'
import { type ResolvedClientOptions, resolveClientOptions } from '../options/resolve'
import { currentInboundContext } from '../inbound/request-context'
import { type PreparedRequest, prepareRequest, startAuthorized } from '../pipeline/prepare'
import type { TokenSource } from '../pipeline/auth'
import { admit, isRefusal, refuse } from '../pipeline/admission'
import type { HttpResponse } from '../pipeline/response'
import { type ClientStats, sumPoolStats } from './stats'
import { installTelemetry } from '../telemetry/otel'
import type { CallOptions, CreateHttpClientOptions, RequestOptions, StreamOptions } from '../types'
import type { HttpStream } from '../streaming/http-stream'
import { openStream } from '../streaming/open-stream'
import { describe, isHeaderName } from '../validate'

export type { ClientStats } from './stats'
export type { PoolStats } from '../transport/upstream'
export type { ClientInternals } from './client-core'

/** Only `createHttpClient()` and the plugin make clients: `new HttpClient()` from outside throws. */
const kMadeByFactory = Symbol('made by createHttpClient or the plugin')

/**
 * A named client for one upstream service (one origin, or several
 * replicas): undici pools behind retries, hedging, a circuit breaker,
 * concurrency limits and timeouts.
 */
export class HttpClient {
  /** The client's name, as registered. */
  readonly name: string
  readonly #core: ClientCore

  /** Use `createHttpClient()` or the plugin. */
  private constructor (token: typeof kMadeByFactory, options: ResolvedClientOptions, logger: Logger, internals: ClientInternals, optionPath: string) {
    if (token !== kMadeByFactory) throw new TypeError('HttpClient cannot be constructed: use createHttpClient() or register the plugin')
    installTelemetry()
    this.name = options.name
    this.#core = new ClientCore(options, logger, internals, optionPath)
  }

  /** @internal A client from resolved options; `optionPath` prefixes the dotted path of option errors. */
  static create (options: ResolvedClientOptions, logger: Logger, internals: ClientInternals = {}, optionPath = ''): HttpClient {
    return new HttpClient(kMadeByFactory, options, logger, internals, optionPath)
  }

  get (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('GET', path, options, false)
  }

  post (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('POST', path, options, false)
  }

  put (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('PUT', path, options, false)
  }

  patch (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('PATCH', path, options, false)
  }

  delete (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('DELETE', path, options, false)
  }

  head (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('HEAD', path, options, false)
  }

  options (path: string, options?: CallOptions): Promise<HttpResponse> {
    return this.#send('OPTIONS', path, options, false)
  }

  /** A call with any method: `request({ method, path, ...options })`. */
  request (options: RequestOptions): Promise<HttpResponse> {
    const method = (options as Partial<RequestOptions> | undefined)?.method
    if (typeof method !== 'string' || !isHeaderName(method)) {
      return Promise.reject(new InvalidRequestError({ clientName: this.name, method: String(method), path: String(options?.path) }, `method must be an HTTP method name, got ${describe(method)}`))
    }
    const upper = method.toUpperCase()
    if (upper === 'CONNECT') {
      return Promise.reject(new InvalidRequestError({ clientName: this.name, method: upper, path: String(options.path) }, 'method CONNECT is not supported: undici would hand the socket away'))
    }
    return this.#send(upper, options.path, options, true)
  }

  /**
   * A streamed response: resolves with an `HttpStream` once a 2xx answer's
   * headers came, after retries, the breaker and the timeouts opened it as
   * any call; then bounded by `idleTimeout`, `maxDuration`, the `signal` and
   * close. A final answer that is not 2xx rejects with `HttpStatusError`.
   */
  stream (path: string, options?: StreamOptions): Promise<HttpStream> {
    const core = this.#core
    const method = typeof options?.method === 'string' ? options.method.toUpperCase() : 'GET'
    if (core.closed) return Promise.reject(new ClientClosedError({ clientName: this.name, method, path }))
    try {
      return openStream(core, path, options, currentInboundContext(), core.clock.now())
    } catch (error) {
      return Promise.reject(error)
    }
  }

  stats (): ClientStats {
    const core = this.#core
    const counters = core.counters
    const now = core.clock.now()
    const upstreams = core.replicas.upstreams
    // A dispatcher given in the options serves every replica: count its stats once.
    const pools = upstreams.filter((upstream, i) => upstream.given === null || upstreams.findIndex((other) => other.given === upstream.given) === i)
    return {
      circuit: core.breaker === null ? 'closed' : core.breaker.state(now),
      inFlight: core.limit.inFlight,
      requests: counters.requests,
      successes: counters.successes,
      failures: counters.failures,
      retries: counters.retries,
      retriesDenied: counters.retriesDenied,
      shortCircuited: counters.shortCircuited,
      hedges: counters.hedges,
      hedgeWins: counters.hedgeWins,
      overloaded: counters.overloaded,
      streams: counters.streams,
      rateLimited: counters.rateLimited,
      rateLimitWaits: counters.rateLimitWaits,
      redirects: counters.redirects,
      concurrencyLimit: core.limit.adaptiveLimit,
      replicas: core.replicas.stats(now),
      pool: sumPoolStats(pools.map((upstream) => upstream.stats()))
    }
  }

  /**
   * Stops new calls (`ClientClosedError`), cuts waits between retries, lets
   * what is in flight finish within one `timeout`, then cuts the rest and
   * closes the pools. A dispatcher given in the options is never closed.
   */
  close (): Promise<void> {
    return this.#core.close()
  }

  /** @internal From `fastify.close()` on, before `onClose`: waits are cut and no retry or hedge starts. */
  drain (): void {
    this.#core.drain()
  }

  /** What `JSON.stringify()` shows: the settings, with header values and `auth` redacted. */
  toJSON (): Record<string, unknown> {
    const settings = this.#core.settings
    const headers: Record<string, string> = {}
    for (let i = 0; i < settings.defaultHeaders.length; i += 2) headers[settings.defaultHeaders[i]] = '[redacted]'
    const shown: Record<string, unknown> = {
      name: this.name,
      baseUrl: settings.origins.map((origin) => origin + settings.basePath),
      timeout: settings.timeout,
      totalTimeout: settings.totalTimeout,
      defaultHeaders: headers
    }
    if (settings.auth !== false) shown.auth = '[redacted]'
    return shown
  }

  [inspect.custom] (): string {
    return `HttpClient ${inspect(this.toJSON())}`
  }

  #send (method: string, path: string, options: CallOptions | undefined, isRequest: boolean): Promise<HttpResponse> {
    const core = this.#core
    if (core.closed) return Promise.reject(new ClientClosedError({ clientName: this.name, method, path }))
    const inbound = currentInboundContext()
    const now = core.clock.now()
    let request: PreparedRequest | undefined
    // A call without options has nothing to check but its path.
    if (options !== undefined || core.tokens !== null || !core.isSendable(path)) {
      try {
        request = prepareRequest(core.settings, method, path, options, inbound, isRequest)
      } catch (error) {
        return Promise.reject(error)
      }
      if (core.tokens !== null) return this.#sendWithToken(core.tokens, request, now)
    }
    const log = inbound?.log ?? core.log
    const admission = request === undefined ? admit(core, inbound?.deadlineAt, undefined, log, now) : admit(core, request.deadlineAt, request.signal, log, now)
    if (isRefusal(admission)) return refuse(core, admission, method, path, request?.signal, log, now)
    // Made only once admitted: a refused call without options allocates nothing before its error.
    request ??= prepareRequest(core.settings, method, path, undefined, inbound, isRequest)
    return new Call(core, request, now).run(admission)
  }

  /** A call under `auth.token`: sent at once while a token is known, else once the function has given one. */
  #sendWithToken (tokens: TokenSource, request: PreparedRequest, now: number): Promise<HttpResponse> {
    const core = this.#core
    return startAuthorized(tokens, request, this.name, (authorized, late) => {
      if (late && core.closed) throw new ClientClosedError({ clientName: this.name, method: request.method, path: request.path })
      return new Call(core, authorized, late ? core.clock.now() : now).start()
    })
  }
}

/**
 * Makes a client without Fastify, for scripts and tests:
 * `createHttpClient({ name, baseUrl, logger, ...clientOptions })`.
 */
export function createHttpClient (options: CreateHttpClientOptions): HttpClient {
  if (typeof options !== 'object' || options === null) throw new InvalidOptionsError('options', `must be an object, got ${describe(options)}`)
  const { name, logger, ...clientOptions } = options
  if (typeof name !== 'string' || name === '') throw new InvalidOptionsError('name', `must be a non-empty string, got ${describe(name)}`)
  if (logger !== undefined && (typeof logger !== 'object' || logger === null || typeof logger.info !== 'function' || typeof logger.warn !== 'function')) {
    throw new InvalidOptionsError('logger', 'must be a pino-compatible logger (with info() and warn())', name)
  }
  return HttpClient.create(resolveClientOptions(name, clientOptions, ''), logger ?? silentLogger)
}
