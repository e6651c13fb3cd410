import type { Dispatcher, Pool } from 'undici'
import { InvalidOptionsError } from './errors'
import { type HeaderList, toHeaderList } from './headers'
import type { ClientOptions, Jitter, PluginOptions, RetryOptions } from './types'
import { parseBaseUrl } from './url'
import {
  checkBoolean, checkDuration, checkInteger, checkKeys, checkNumber, checkObject,
  describe, type Fail, isHeaderName, isPlainObject
} from './validate'

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

export interface ResolvedBreaker {
  readonly failureThreshold: number
  readonly recoveryMs: number
  readonly halfOpenMaxProbes: number
  readonly openOnRetryAfter: boolean
}

/** A client's options, validated and with every default filled in. */
export interface ResolvedClientOptions {
  readonly name: string
  readonly origins: readonly string[]
  readonly basePath: string
  readonly timeout: number
  readonly totalTimeout: number
  readonly defaultHeaders: HeaderList
  readonly propagateRequestId: boolean
  readonly retry: ResolvedRetry | false
  readonly circuitBreaker: ResolvedBreaker | false
  readonly pool: Pool.Options
  readonly maxResponseBytes: number | undefined
  readonly dispatcher: Dispatcher | undefined
  readonly hedge: ResolvedHedge | false
  readonly maxInFlight: number
  readonly adaptiveConcurrency: ResolvedAdaptive | false
  readonly outlierDetection: ResolvedOutlier | false
}

export interface ResolvedHedge { readonly delayMs: number | 'auto', readonly maxHedges: number }
export interface ResolvedAdaptive { readonly initial: number, readonly min: number, readonly max: number }
export interface ResolvedOutlier { readonly consecutiveFailures: number, readonly baseEjectionMs: number, readonly maxEjectedPercent: number }

export interface ResolvedPluginOptions {
  readonly clients: readonly ResolvedClientOptions[]
  readonly requestIdHeader: string
  readonly echoRequestId: boolean
  readonly propagateHeaders: readonly string[]
}

export const DEFAULT_TIMEOUT = 10_000
export const DEFAULT_TOTAL_TIMEOUT = 30_000
/** undici's own default is unlimited; a client should not open sockets without bound. */
export const DEFAULT_CONNECTIONS = 128
export const DEFAULT_STATUS_CODES: readonly number[] = Object.freeze([408, 429, 500, 502, 503, 504])

const CLIENT_KEYS = ['baseUrl', 'timeout', 'totalTimeout', 'defaultHeaders', 'propagateRequestId', 'retry', 'circuitBreaker', 'pool', 'maxResponseBytes', 'dispatcher']
const RETRY_KEYS = ['maxAttempts', 'backoffInitialMs', 'backoffMaxMs', 'jitter', 'statusCodes', 'respectRetryAfter', 'retryNonIdempotent', 'budget']
const BUDGET_KEYS = ['ratio', 'minPerSecond']
const BREAKER_KEYS = ['failureThreshold', 'recoveryMs', 'halfOpenMaxProbes']
const PLUGIN_KEYS = ['clients', 'defaults', 'requestIdHeader', 'echoRequestId', 'propagateHeaders']
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

export const DEFAULT_BREAKER: ResolvedBreaker = Object.freeze({ failureThreshold: 5, recoveryMs: 30_000, halfOpenMaxProbes: 1, openOnRetryAfter: true })

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

function resolveBreaker (value: unknown, path: string, fail: Fail): ResolvedBreaker | false {
  if (value === false) return false
  if (value === undefined) return DEFAULT_BREAKER
  const given = checkObject(value, path, fail)
  checkKeys(given, BREAKER_KEYS, path, fail)
  return Object.freeze({
    failureThreshold: given.failureThreshold === undefined ? DEFAULT_BREAKER.failureThreshold : checkInteger(given.failureThreshold, join(path, 'failureThreshold'), fail, 1),
    recoveryMs: given.recoveryMs === undefined ? DEFAULT_BREAKER.recoveryMs : checkDuration(given.recoveryMs, join(path, 'recoveryMs'), fail),
    halfOpenMaxProbes: given.halfOpenMaxProbes === undefined ? DEFAULT_BREAKER.halfOpenMaxProbes : checkInteger(given.halfOpenMaxProbes, join(path, 'halfOpenMaxProbes'), fail, 1),
    openOnRetryAfter: true
  })
}

function isDispatcher (value: unknown): value is Dispatcher {
  return typeof value === 'object' && value !== null && typeof (value as Dispatcher).dispatch === 'function'
}

/**
 * Validates one client's options (already merged with `defaults`) and fills
 * in every default. `path` prefixes option names in errors, e.g.
 * `clients.payments`.
 */
export function resolveClientOptions (name: string, options: unknown, path: string): ResolvedClientOptions {
  const fail: Fail = (option, reason) => { throw new InvalidOptionsError(option, reason, name) }
  const given = checkObject(options, path, fail) as ClientOptions
  checkKeys(given, CLIENT_KEYS, path, fail)
  const { origins, basePath } = parseBaseUrl(given.baseUrl, join(path, 'baseUrl'), fail)
  const timeout = given.timeout === undefined ? DEFAULT_TIMEOUT : checkDuration(given.timeout, join(path, 'timeout'), fail)
  const totalTimeout = given.totalTimeout === undefined ? DEFAULT_TOTAL_TIMEOUT : checkDuration(given.totalTimeout, join(path, 'totalTimeout'), fail)
  const defaultHeaders = given.defaultHeaders === undefined ? [] : toHeaderList(given.defaultHeaders, join(path, 'defaultHeaders'), fail)
  const propagateRequestId = given.propagateRequestId === undefined ? true : checkBoolean(given.propagateRequestId, join(path, 'propagateRequestId'), fail)
  const pool = given.pool === undefined ? {} : checkObject(given.pool, join(path, 'pool'), fail) as Pool.Options
  let maxResponseBytes: number | undefined
  if (given.maxResponseBytes !== undefined) maxResponseBytes = checkInteger(given.maxResponseBytes, join(path, 'maxResponseBytes'), fail, 1)
  if (given.dispatcher !== undefined && !isDispatcher(given.dispatcher)) {
    fail(join(path, 'dispatcher'), `must be an undici Dispatcher (with a dispatch() method), got ${describe(given.dispatcher)}`)
  }
  return Object.freeze({
    name,
    origins,
    basePath,
    timeout,
    totalTimeout,
    defaultHeaders,
    propagateRequestId,
    retry: resolveRetry(given.retry, DEFAULT_RETRY, join(path, 'retry'), fail),
    circuitBreaker: resolveBreaker(given.circuitBreaker, join(path, 'circuitBreaker'), fail),
    pool: { connections: DEFAULT_CONNECTIONS, ...pool },
    maxResponseBytes,
    dispatcher: given.dispatcher,
    hedge: false,
    maxInFlight: 1000,
    adaptiveConcurrency: false,
    outlierDetection: false
  })
}

const MERGED_OBJECTS = new Set(['retry', 'circuitBreaker', 'pool', 'budget'])

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
    return resolveClientOptions(name, mergeOptions(defaults, own), `clients.${name}`)
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
  return Object.freeze({ clients: resolved, requestIdHeader, echoRequestId, propagateHeaders: Object.freeze(propagateHeaders) })
}

/** Checks `defaults` on their own first, so that a bad default is reported as `defaults.<option>`. */
function checkDefaults (defaults: Record<string, unknown>): void {
  const probe = { baseUrl: 'http://127.0.0.1', ...defaults }
  try {
    resolveClientOptions('defaults', probe, 'defaults')
  } catch (error) {
    if (error instanceof InvalidOptionsError) throw new InvalidOptionsError(error.option, error.message.replace(/^Invalid option \S+ of client "defaults": /, ''))
    throw error
  }
}

/** Merges a per-call `hedge` over the client's. */
export function resolveHedge (value: unknown, base: ResolvedHedge | false, path: string, fail: Fail): ResolvedHedge | false {
  if (value === false) return false
  if (value === undefined) return base
  const given = checkObject(value, path, fail)
  checkKeys(given, ['delayMs', 'maxHedges'], path, fail)
  return Object.freeze({
    delayMs: given.delayMs === undefined ? (base === false ? 'auto' : base.delayMs) : given.delayMs === 'auto' ? 'auto' : checkDuration(given.delayMs, join(path, 'delayMs'), fail),
    maxHedges: given.maxHedges === undefined ? (base === false ? 1 : base.maxHedges) : checkInteger(given.maxHedges, join(path, 'maxHedges'), fail, 1, 3)
  })
}
