import type { Dispatcher, Pool } from 'undici'
import { InvalidOptionsError } from '../errors'
import { hasHeader, type HeaderList, toHeaderList } from '../headers'
import { type ResolvedAuth, resolveAuth } from './auth'
import { type ResolvedBreaker, resolveBreaker } from './breaker'
import { type ResolvedRateLimit, resolveRateLimit } from './rate-limit'
import type { ClientOptions, Jitter, PluginOptions, RetryOptions } from '../types'
import { parseBaseUrl } from '../url'
import {
  checkBoolean, checkDuration, checkInteger, checkKeys, checkNumber, checkObject,
  describe, type Fail, isHeaderName, isPlainObject, MAX_TIMER_MS
} from '../validate'

export { DEFAULT_BREAKER, type ResolvedBreaker } from './breaker'

export interface ResolvedRetry {
  readonly maxAttempts: number
  readonly backoffInitialMs: number
  readonly backoffMaxMs: number
  readonly jitter: Jitter
  readonly statusCodes: readonly number[]
  /** The lowest status in `statusCodes`: anything below it needs no lookup. */
  readonly lowestRetryStatus: number
  readonly respectRetryAfter: boolean
  readonly retryNonIdempotent: boolean
  readonly budget: { readonly ratio: number, readonly minPerSecond: number } | false
}

export interface ResolvedHedge {
  readonly delayMs: number | 'auto'
  /** 1 to 3. */
  readonly maxHedges: number
}

export interface ResolvedAdaptive {
  readonly initial: number
  readonly min: number
  readonly max: number
}

export interface ResolvedOutlier {
  readonly consecutiveFailures: number
  readonly baseEjectionMs: number
  readonly maxEjectedPercent: number
}

/** A client's options, validated and with every default filled in. */
export interface ResolvedClientOptions {
  readonly name: string
  /** `protocol//host:port` of each replica; at least one. */
  readonly origins: readonly string[]
  /** The same on every replica: `''` or e.g. `/v1` (no trailing slash). */
  readonly basePath: string
  readonly timeout: number
  readonly totalTimeout: number
  /** Lower-case flat list. */
  readonly defaultHeaders: HeaderList
  readonly propagateRequestId: boolean
  readonly retry: ResolvedRetry | false
  readonly circuitBreaker: ResolvedBreaker | false
  /** `connections` filled in; only keys undici's Pool knows. */
  readonly pool: Pool.Options
  readonly maxResponseBytes: number | undefined
  /** A given dispatcher (undici 7 or 8; only `dispatch()` is used). */
  readonly dispatcher: Dispatcher | undefined
  readonly hedge: ResolvedHedge | false
  /** `Infinity` when the option is `false`. */
  readonly maxInFlight: number
  readonly adaptiveConcurrency: ResolvedAdaptive | false
  /** Filled with defaults when there are several origins; always `false` for one. */
  readonly outlierDetection: ResolvedOutlier | false
  /** Redirects a call follows, 0 to `MAX_REDIRECTS`. */
  readonly followRedirects: number
  /** A fixed `{ bearer }` or `{ username, password }` is in `defaultHeaders` too, as `authorization`. */
  readonly auth: ResolvedAuth | false
  /** ms a stream may go without a byte once open. */
  readonly idleTimeout: number
  readonly rateLimit: ResolvedRateLimit | false
}

export interface ResolvedDeadline {
  /** Lower-case header name. */
  readonly header: string
  readonly forward: boolean
}

export interface ResolvedPluginOptions {
  readonly clients: readonly ResolvedClientOptions[]
  readonly requestIdHeader: string
  readonly echoRequestId: boolean
  readonly propagateHeaders: readonly string[]
  readonly deadline: ResolvedDeadline | false
}

export const DEFAULT_TIMEOUT = 10_000
export const DEFAULT_TOTAL_TIMEOUT = 30_000
/** undici's own default is unlimited; a client should not open sockets without bound. */
export const DEFAULT_CONNECTIONS = 128
export const DEFAULT_MAX_IN_FLIGHT = 1_000
export const DEFAULT_STATUS_CODES: readonly number[] = Object.freeze([408, 429, 500, 502, 503, 504])
export const DEFAULT_DEADLINE_HEADER = 'x-request-timeout-ms'
/** The most redirects a client or a call may follow. */
export const MAX_REDIRECTS = 20
export const DEFAULT_IDLE_TIMEOUT = 30_000

const CLIENT_KEYS = [
  'baseUrl', 'timeout', 'totalTimeout', 'defaultHeaders', 'propagateRequestId', 'retry', 'circuitBreaker', 'pool',
  'maxResponseBytes', 'dispatcher', 'hedge', 'maxInFlight', 'adaptiveConcurrency', 'outlierDetection', 'followRedirects', 'auth', 'idleTimeout', 'rateLimit'
]
const RETRY_KEYS = ['maxAttempts', 'backoffInitialMs', 'backoffMaxMs', 'jitter', 'statusCodes', 'respectRetryAfter', 'retryNonIdempotent', 'budget']
const BUDGET_KEYS = ['ratio', 'minPerSecond']
const HEDGE_KEYS = ['delayMs', 'maxHedges']
const ADAPTIVE_KEYS = ['initial', 'min', 'max']
const OUTLIER_KEYS = ['consecutiveFailures', 'baseEjectionMs', 'maxEjectedPercent']
const DEADLINE_KEYS = ['header', 'forward']
const PLUGIN_KEYS = ['clients', 'defaults', 'requestIdHeader', 'echoRequestId', 'propagateHeaders', 'deadline']
/**
 * The options of undici 7's `Pool` and `Client` (types/pool.d.ts and
 * types/client.d.ts), less those its types mark `never` (removed options that
 * undici rejects anyway). A typo such as `conections` would otherwise be
 * ignored and leave the pool at its default size.
 */
const POOL_KEYS = [
  'factory', 'connections', 'clientTtl', 'interceptors',
  'maxHeaderSize', 'headersTimeout', 'connectTimeout', 'bodyTimeout', 'keepAliveTimeout', 'keepAliveMaxTimeout',
  'keepAliveTimeoutThreshold', 'socketPath', 'pipelining', 'strictContentLength', 'maxCachedSessions', 'connect',
  'maxRequestsPerClient', 'localAddress', 'maxResponseSize', 'autoSelectFamily', 'autoSelectFamilyAttemptTimeout',
  'allowH2', 'maxConcurrentStreams', 'initialWindowSize', 'connectionWindowSize', 'pingInterval', 'webSocket', 'eventSource'
]
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/

export const DEFAULT_RETRY: ResolvedRetry = Object.freeze({
  maxAttempts: 3,
  backoffInitialMs: 200,
  backoffMaxMs: 10_000,
  jitter: 'full',
  statusCodes: DEFAULT_STATUS_CODES,
  lowestRetryStatus: 408,
  respectRetryAfter: true,
  retryNonIdempotent: false,
  budget: Object.freeze({ ratio: 0.2, minPerSecond: 10 })
})

export const DEFAULT_HEDGE: ResolvedHedge = Object.freeze({ delayMs: 'auto', maxHedges: 1 })
export const DEFAULT_OUTLIER: ResolvedOutlier = Object.freeze({ consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectedPercent: 50 })
const DEFAULT_ADAPTIVE_INITIAL = 20
const DEFAULT_ADAPTIVE_MAX = 1_000

function join (path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`
}

/** Merges `retry` settings over a resolved base and validates the result. */
export function resolveRetry (value: unknown, base: ResolvedRetry, path: string, fail: Fail): ResolvedRetry | false {
  if (value === false) return false
  if (value === undefined) return base
  const retry = checkObject(value, path, fail) as RetryOptions
  checkKeys(retry, RETRY_KEYS, path, fail)
  const maxAttempts = retry.maxAttempts === undefined ? base.maxAttempts : checkInteger(retry.maxAttempts, join(path, 'maxAttempts'), fail, 1, 100)
  const backoffInitialMs = retry.backoffInitialMs === undefined ? base.backoffInitialMs : checkDuration(retry.backoffInitialMs, join(path, 'backoffInitialMs'), fail, { allowZero: true })
  const backoffMaxMs = retry.backoffMaxMs === undefined ? base.backoffMaxMs : checkDuration(retry.backoffMaxMs, join(path, 'backoffMaxMs'), fail, { allowZero: true })
  if (backoffMaxMs < backoffInitialMs) fail(join(path, 'backoffMaxMs'), `must not be less than backoffInitialMs (${backoffInitialMs}), got ${backoffMaxMs}`)
  let jitter = base.jitter
  if (retry.jitter !== undefined) {
    if (retry.jitter !== 'full' && retry.jitter !== 'none') fail(join(path, 'jitter'), `must be 'full' or 'none', got ${describe(retry.jitter)}`)
    jitter = retry.jitter
  }
  let statusCodes = base.statusCodes
  if (retry.statusCodes !== undefined) {
    if (!Array.isArray(retry.statusCodes)) fail(join(path, 'statusCodes'), `must be an array of HTTP status codes, got ${describe(retry.statusCodes)}`)
    statusCodes = Object.freeze(retry.statusCodes.map((code, i) => checkInteger(code, `${join(path, 'statusCodes')}.${i}`, fail, 100, 599)))
  }
  const respectRetryAfter = retry.respectRetryAfter === undefined ? base.respectRetryAfter : checkBoolean(retry.respectRetryAfter, join(path, 'respectRetryAfter'), fail)
  const retryNonIdempotent = retry.retryNonIdempotent === undefined ? base.retryNonIdempotent : checkBoolean(retry.retryNonIdempotent, join(path, 'retryNonIdempotent'), fail)
  let budget = base.budget
  if (retry.budget === false) {
    budget = false
  } else if (retry.budget !== undefined) {
    const budgetPath = join(path, 'budget')
    const given = checkObject(retry.budget, budgetPath, fail)
    checkKeys(given, BUDGET_KEYS, budgetPath, fail)
    const fallback = base.budget === false ? (DEFAULT_RETRY.budget as { ratio: number, minPerSecond: number }) : base.budget
    budget = Object.freeze({
      ratio: given.ratio === undefined ? fallback.ratio : checkNumber(given.ratio, join(budgetPath, 'ratio'), fail, 0),
      minPerSecond: given.minPerSecond === undefined ? fallback.minPerSecond : checkNumber(given.minPerSecond, join(budgetPath, 'minPerSecond'), fail, 0)
    })
  }
  return Object.freeze({
    maxAttempts,
    backoffInitialMs,
    backoffMaxMs,
    jitter,
    statusCodes,
    lowestRetryStatus: statusCodes.length === 0 ? 1000 : Math.min(...statusCodes),
    respectRetryAfter,
    retryNonIdempotent,
    budget
  })
}

/**
 * Merges `hedge` settings over a resolved base (the client's, for a per-call
 * override) and validates the result. A base of `false` takes the defaults.
 */
export function resolveHedge (value: unknown, base: ResolvedHedge | false, path: string, fail: Fail): ResolvedHedge | false {
  if (value === false) return false
  if (value === undefined) return base
  const given = checkObject(value, path, fail)
  checkKeys(given, HEDGE_KEYS, path, fail)
  const fallback = base === false ? DEFAULT_HEDGE : base
  let delayMs = fallback.delayMs
  if (given.delayMs !== undefined) {
    if (given.delayMs !== 'auto' && typeof given.delayMs !== 'number') fail(join(path, 'delayMs'), `must be a number of milliseconds or 'auto', got ${describe(given.delayMs)}`)
    delayMs = given.delayMs === 'auto' ? 'auto' : checkDuration(given.delayMs, join(path, 'delayMs'), fail)
  }
  const maxHedges = given.maxHedges === undefined ? fallback.maxHedges : checkInteger(given.maxHedges, join(path, 'maxHedges'), fail, 1, 3)
  return Object.freeze({ delayMs, maxHedges })
}

function resolveMaxInFlight (value: unknown, path: string, fail: Fail): number {
  if (value === undefined) return DEFAULT_MAX_IN_FLIGHT
  if (value === false) return Infinity
  if (typeof value !== 'number') fail(path, `must be a positive integer or false, got ${describe(value)}`)
  return checkInteger(value, path, fail, 1)
}

function resolveAdaptive (value: unknown, maxInFlight: number, path: string, fail: Fail): ResolvedAdaptive | false {
  if (value === undefined || value === false) return false
  const given = value === true ? {} : checkObject(value, path, fail)
  checkKeys(given, ADAPTIVE_KEYS, path, fail)
  const max = given.max === undefined ? (maxInFlight === Infinity ? DEFAULT_ADAPTIVE_MAX : maxInFlight) : checkInteger(given.max, join(path, 'max'), fail, 1)
  const min = given.min === undefined ? 1 : checkInteger(given.min, join(path, 'min'), fail, 1)
  // The default start is lowered to a smaller max (`maxInFlight: 10`); a given one must fit.
  const initial = given.initial === undefined ? Math.max(min, Math.min(DEFAULT_ADAPTIVE_INITIAL, max)) : checkInteger(given.initial, join(path, 'initial'), fail, 1)
  if (min > max) fail(join(path, 'min'), `must not be more than max (${max}), got ${min}`)
  if (initial < min || initial > max) fail(join(path, 'initial'), `must be between min (${min}) and max (${max}), got ${initial}`)
  return Object.freeze({ initial, min, max })
}

function resolveOutlier (value: unknown, replicas: number, path: string, fail: Fail): ResolvedOutlier | false {
  if (value === false) return false
  if (value !== undefined && replicas < 2) fail(path, 'applies only to several replicas: give baseUrl as an array of two or more URLs')
  if (replicas < 2) return false
  if (value === undefined) return DEFAULT_OUTLIER
  const given = checkObject(value, path, fail)
  checkKeys(given, OUTLIER_KEYS, path, fail)
  return Object.freeze({
    consecutiveFailures: given.consecutiveFailures === undefined ? DEFAULT_OUTLIER.consecutiveFailures : checkInteger(given.consecutiveFailures, join(path, 'consecutiveFailures'), fail, 1),
    baseEjectionMs: given.baseEjectionMs === undefined ? DEFAULT_OUTLIER.baseEjectionMs : checkDuration(given.baseEjectionMs, join(path, 'baseEjectionMs'), fail),
    maxEjectedPercent: given.maxEjectedPercent === undefined ? DEFAULT_OUTLIER.maxEjectedPercent : checkNumber(given.maxEjectedPercent, join(path, 'maxEjectedPercent'), fail, 0, 100)
  })
}

function resolvePool (value: unknown, path: string, fail: Fail): Pool.Options {
  const pool: Record<string, unknown> = { connections: DEFAULT_CONNECTIONS }
  if (value === undefined) return pool
  const given = checkObject(value, path, fail)
  checkKeys(given, POOL_KEYS, path, fail)
  // An `undefined` key keeps the default: `connections: undefined` must not mean unlimited.
  for (const key of Object.keys(given)) {
    if (given[key] !== undefined) pool[key] = given[key]
  }
  return pool
}

function resolveTimeouts (given: ClientOptions, path: string, fail: Fail): { timeout: number, totalTimeout: number } {
  const totalTimeout = given.totalTimeout === undefined ? DEFAULT_TOTAL_TIMEOUT : checkDuration(given.totalTimeout, join(path, 'totalTimeout'), fail)
  if (given.timeout === undefined) return { timeout: Math.min(DEFAULT_TIMEOUT, totalTimeout), totalTimeout }
  const timeout = checkDuration(given.timeout, join(path, 'timeout'), fail)
  if (timeout > totalTimeout) {
    const which = given.totalTimeout === undefined ? `the default totalTimeout (${totalTimeout})` : `totalTimeout (${totalTimeout})`
    fail(join(path, 'timeout'), `must not be larger than ${which}, got ${timeout}; raise totalTimeout too`)
  }
  return { timeout, totalTimeout }
}

function isDispatcher (value: unknown): value is Dispatcher {
  return typeof value === 'object' && value !== null && typeof (value as Dispatcher).dispatch === 'function'
}

/**
 * Validates one client's options (already merged with `defaults`) and fills
 * in every default. `path` prefixes option names in errors, e.g.
 * `clients.payments`.
 */
export function resolveClientOptions (name: string, options: unknown, path: string, errorsName: string | null = name): ResolvedClientOptions {
  const fail: Fail = (option, reason) => { throw new InvalidOptionsError(option, reason, errorsName ?? undefined) }
  const given = checkObject(options, path, fail) as ClientOptions
  checkKeys(given, CLIENT_KEYS, path, fail)
  const { origins, basePath } = parseBaseUrl(given.baseUrl, join(path, 'baseUrl'), fail)
  const { timeout, totalTimeout } = resolveTimeouts(given, path, fail)
  let defaultHeaders = given.defaultHeaders === undefined ? [] : toHeaderList(given.defaultHeaders, join(path, 'defaultHeaders'), fail, true)
  const auth = resolveAuth(given.auth, join(path, 'auth'), fail)
  if (auth !== false) {
    if (hasHeader(defaultHeaders, 'authorization')) fail(join(path, 'auth'), 'cannot be used with an authorization header in defaultHeaders: give one of them')
    // A fixed value is a default header like any other: a call's own wins, and it is redacted with them.
    if (auth.kind !== 'token') defaultHeaders = [...defaultHeaders, 'authorization', auth.header]
  }
  const propagateRequestId = given.propagateRequestId === undefined ? true : checkBoolean(given.propagateRequestId, join(path, 'propagateRequestId'), fail)
  let maxResponseBytes: number | undefined
  if (given.maxResponseBytes !== undefined) maxResponseBytes = checkInteger(given.maxResponseBytes, join(path, 'maxResponseBytes'), fail, 1)
  if (given.dispatcher !== undefined && !isDispatcher(given.dispatcher)) {
    fail(join(path, 'dispatcher'), `must be an undici Dispatcher (with a dispatch() method), got ${describe(given.dispatcher)}`)
  }
  const maxInFlight = resolveMaxInFlight(given.maxInFlight, join(path, 'maxInFlight'), fail)
  return Object.freeze({
    name,
    origins: Object.freeze(origins),
    basePath,
    timeout,
    totalTimeout,
    defaultHeaders,
    propagateRequestId,
    retry: resolveRetry(given.retry, DEFAULT_RETRY, join(path, 'retry'), fail),
    circuitBreaker: resolveBreaker(given.circuitBreaker, join(path, 'circuitBreaker'), fail),
    pool: resolvePool(given.pool, join(path, 'pool'), fail),
    maxResponseBytes,
    dispatcher: given.dispatcher as Dispatcher | undefined,
    hedge: resolveHedge(given.hedge, false, join(path, 'hedge'), fail),
    maxInFlight,
    adaptiveConcurrency: resolveAdaptive(given.adaptiveConcurrency, maxInFlight, join(path, 'adaptiveConcurrency'), fail),
    outlierDetection: resolveOutlier(given.outlierDetection, origins.length, join(path, 'outlierDetection'), fail),
    followRedirects: given.followRedirects === undefined ? 0 : checkInteger(given.followRedirects, join(path, 'followRedirects'), fail, 0, MAX_REDIRECTS),
    auth,
    idleTimeout: given.idleTimeout === undefined ? DEFAULT_IDLE_TIMEOUT : checkDuration(given.idleTimeout, join(path, 'idleTimeout'), fail),
    rateLimit: resolveRateLimit(given.rateLimit, name, join(path, 'rateLimit'), fail)
  })
}

const MERGED_OBJECTS = new Set(['retry', 'circuitBreaker', 'pool', 'budget', 'hedge', 'adaptiveConcurrency', 'outlierDetection', 'rateLimit'])

/** `own` over `base`, merging the nested option objects; `false` and other values replace. */
function mergeOptions (base: Record<string, unknown>, own: Record<string, unknown>): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base }
  for (const key of Object.keys(own)) {
    const value = own[key]
    if (value === undefined) continue
    if (key === 'defaultHeaders' && isPlainObject(base[key]) && isPlainObject(value)) {
      merged[key] = mergeHeaderRecords(base[key], value)
    } else if (MERGED_OBJECTS.has(key) && isPlainObject(base[key]) && isPlainObject(value)) {
      merged[key] = mergeOptions(base[key], value)
    } else {
      merged[key] = value
    }
  }
  return merged
}

/** Header records merge by name without regard to case; `own` wins. */
function mergeHeaderRecords (base: Record<string, unknown>, own: Record<string, unknown>): Record<string, unknown> {
  const ownNames = new Set(Object.keys(own).map((name) => name.toLowerCase()))
  const merged: Record<string, unknown> = {}
  for (const name of Object.keys(base)) {
    if (!ownNames.has(name.toLowerCase())) merged[name] = base[name]
  }
  return Object.assign(merged, own)
}

function hasReplicas (baseUrl: unknown): boolean {
  return Array.isArray(baseUrl) && baseUrl.length > 1
}

/** One client's options: its own over the defaults. */
function clientOptionsOver (defaults: Record<string, unknown>, own: Record<string, unknown>): Record<string, unknown> {
  const merged = mergeOptions(defaults, own)
  // A default outlierDetection is meant for the clients that have replicas; a
  // client with one baseUrl is refused it only when it asks for it itself.
  if (own.outlierDetection === undefined && !hasReplicas(merged.baseUrl)) delete merged.outlierDetection
  return merged
}

function resolveDeadline (value: unknown, requestIdHeader: string, fail: Fail): ResolvedDeadline | false {
  if (value === undefined || value === false) return false
  const given = value === true ? {} : checkObject(value, 'deadline', fail)
  checkKeys(given, DEADLINE_KEYS, 'deadline', fail)
  let header = DEFAULT_DEADLINE_HEADER
  if (given.header !== undefined) {
    if (typeof given.header !== 'string' || !isHeaderName(given.header)) fail('deadline.header', `must be a header name, got ${describe(given.header)}`)
    header = given.header.toLowerCase()
  }
  if (header === requestIdHeader) fail('deadline.header', `must not be the request id header (${requestIdHeader})`)
  const forward = given.forward === undefined ? true : checkBoolean(given.forward, 'deadline.forward', fail)
  return Object.freeze({ header, forward })
}

/** Validates the plugin's options, merging `defaults` under each client. */
export function resolvePluginOptions (options: unknown): ResolvedPluginOptions {
  const fail: Fail = (option, reason) => { throw new InvalidOptionsError(option, reason) }
  const given = checkObject(options ?? {}, '', (option, reason) => fail(option || 'options', reason)) as Partial<PluginOptions>
  checkKeys(given, PLUGIN_KEYS, '', fail)
  if (given.clients === undefined) fail('clients', 'is required: an object of client names to client options')
  const clients = checkObject(given.clients, 'clients', fail)
  const names = Object.keys(clients)
  if (names.length === 0) fail('clients', 'must name at least one client')
  const defaults = given.defaults === undefined ? {} : checkObject(given.defaults, 'defaults', fail)
  checkDefaults(defaults)

  const resolved = names.map((name) => {
    if (!IDENTIFIER.test(name)) fail(`clients.${name}`, 'client names must be JavaScript identifiers')
    const own = checkObject(clients[name], `clients.${name}`, (option, reason) => { throw new InvalidOptionsError(option, reason, name) })
    return resolveClientOptions(name, clientOptionsOver(defaults, own), `clients.${name}`)
  })

  let requestIdHeader = 'x-request-id'
  if (given.requestIdHeader !== undefined) {
    if (typeof given.requestIdHeader !== 'string' || !isHeaderName(given.requestIdHeader)) {
      fail('requestIdHeader', `must be a header name, got ${describe(given.requestIdHeader)}`)
    }
    requestIdHeader = given.requestIdHeader.toLowerCase()
  }
  const echoRequestId = given.echoRequestId === undefined ? true : checkBoolean(given.echoRequestId, 'echoRequestId', fail)
  let propagateHeaders: string[] = []
  if (given.propagateHeaders !== undefined) {
    if (!Array.isArray(given.propagateHeaders)) fail('propagateHeaders', `must be an array of header names, got ${describe(given.propagateHeaders)}`)
    propagateHeaders = given.propagateHeaders.map((name: unknown, i: number) => {
      if (typeof name !== 'string' || !isHeaderName(name)) fail(`propagateHeaders.${i}`, `must be a header name, got ${describe(name)}`)
      return name.toLowerCase()
    })
  }
  const deadline = resolveDeadline(given.deadline, requestIdHeader, fail)
  // The deadline header is forwarded with what is left, never copied as it came in.
  if (deadline !== false) {
    const index = propagateHeaders.indexOf(deadline.header)
    if (index >= 0) fail(`propagateHeaders.${index}`, `must not name the deadline header (${deadline.header}): each call forwards the ms it has left on it`)
  }
  return Object.freeze({ clients: resolved, requestIdHeader, echoRequestId, propagateHeaders: Object.freeze(propagateHeaders), deadline })
}

/**
 * Checks `defaults` on their own first, so that a bad default is reported as
 * `defaults.<option>`. What depends on the client is left to each client: a
 * default `timeout` may fit only the clients that raise `totalTimeout`, and a
 * default `outlierDetection` only those with replicas.
 */
function checkDefaults (defaults: Record<string, unknown>): void {
  const { outlierDetection, ...rest } = defaults
  const probe: Record<string, unknown> = { baseUrl: 'http://127.0.0.1', ...rest }
  if (probe.timeout !== undefined && probe.totalTimeout === undefined) probe.totalTimeout = MAX_TIMER_MS
  // Likewise a default recoveryMaxMs may fit only the clients that lower recoveryMs.
  const breaker = probe.circuitBreaker
  if (isPlainObject(breaker) && breaker.recoveryMaxMs !== undefined && breaker.recoveryMs === undefined) probe.circuitBreaker = { ...breaker, recoveryMs: 1 }
  // A default rate limit may leave `perSecond` to each client.
  if (isPlainObject(probe.rateLimit) && probe.rateLimit.perSecond === undefined) probe.rateLimit = { ...probe.rateLimit, perSecond: 1_000_000 }
  // No client to name: a bad default is the plugin's option.
  resolveClientOptions('defaults', probe, 'defaults', null)
  const fail: Fail = (option, reason) => { throw new InvalidOptionsError(option, reason) }
  if (outlierDetection !== undefined) resolveOutlier(outlierDetection, 2, 'defaults.outlierDetection', fail)
}
