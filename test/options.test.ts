import Fastify from 'fastify'
import { readFileSync } from 'node:fs'
import diagnosticsChannel from 'node:diagnostics_channel'
import type { IncomingMessage } from 'node:http'
import path from 'node:path'
import pino from 'pino'
import { test, type Test } from 'tap'
import { Agent, MockAgent } from 'undici'
import resilientHttp, { CHANNELS, createHttpClient, HttpClientError, InvalidOptionsError, InvalidRequestError, type RetryEvent } from '../plugin'
import { resolveHedge, resolvePluginOptions } from '../lib/options/resolve'
import './helpers/fastify-types'
import { sendJson, startUpstream, rejection } from './helpers/upstream'

const BASE = 'http://127.0.0.1:9'

/** Registers the plugin with `options` and returns why `ready()` failed. */
async function registrationError (t: Test, options: unknown): Promise<unknown> {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(resilientHttp, options as never)
  return rejection(app.ready())
}

function assertInvalidOption (t: Test, error: unknown, option: string, clientName?: string): void {
  t.type(error, InvalidOptionsError)
  t.type(error, HttpClientError)
  const e = error as InvalidOptionsError
  t.equal(e.code, 'FRH_INVALID_OPTIONS')
  t.equal(e.option, option)
  t.ok(e.message.includes(option), `message names ${option}: ${e.message}`)
  if (clientName !== undefined) {
    t.equal(e.clientName, clientName)
    t.ok(e.message.includes(`"${clientName}"`), `message names client ${clientName}`)
  }
}

const client = (options: Record<string, unknown>): unknown => ({ clients: { payments: { baseUrl: BASE, ...options } } })

// [description, plugin options, expected option path, client named in the error]
const cases: Array<[string, unknown, string, string?]> = [
  // plugin level
  ['no options at all', undefined, 'clients'],
  ['clients missing', {}, 'clients'],
  ['clients empty', { clients: {} }, 'clients'],
  ['clients not an object', { clients: 'payments' }, 'clients'],
  ['clients an array', { clients: [{ baseUrl: BASE }] }, 'clients'],
  ['client name with a dash', { clients: { 'my-client': { baseUrl: BASE } } }, 'clients.my-client'],
  ['client name starting with a digit', { clients: { '1st': { baseUrl: BASE } } }, 'clients.1st'],
  ['client name with a dot', { clients: { 'a.b': { baseUrl: BASE } } }, 'clients.a.b'],
  ['client options not an object', { clients: { payments: 'http://x' } }, 'clients.payments', 'payments'],
  ['unknown plugin key', { clients: { payments: { baseUrl: BASE } }, client: {} }, 'client'],
  ['requestIdHeader with a space', { clients: { payments: { baseUrl: BASE } }, requestIdHeader: 'x request id' }, 'requestIdHeader'],
  ['requestIdHeader empty', { clients: { payments: { baseUrl: BASE } }, requestIdHeader: '' }, 'requestIdHeader'],
  ['requestIdHeader a number', { clients: { payments: { baseUrl: BASE } }, requestIdHeader: 42 }, 'requestIdHeader'],
  ['echoRequestId a string', { clients: { payments: { baseUrl: BASE } }, echoRequestId: 'yes' }, 'echoRequestId'],
  ['propagateHeaders a string', { clients: { payments: { baseUrl: BASE } }, propagateHeaders: 'traceparent' }, 'propagateHeaders'],
  ['propagateHeaders.0 not a header name', { clients: { payments: { baseUrl: BASE } }, propagateHeaders: ['trace parent'] }, 'propagateHeaders.0'],
  ['propagateHeaders.1 with CRLF', { clients: { payments: { baseUrl: BASE } }, propagateHeaders: ['traceparent', 'x\r\ny'] }, 'propagateHeaders.1'],
  ['propagateHeaders.0 a number', { clients: { payments: { baseUrl: BASE } }, propagateHeaders: [7] }, 'propagateHeaders.0'],
  // defaults
  ['defaults not an object', { clients: { payments: { baseUrl: BASE } }, defaults: 'fast' }, 'defaults'],
  ['defaults.timeout negative', { clients: { payments: { baseUrl: BASE } }, defaults: { timeout: -1 } }, 'defaults.timeout'],
  ['defaults unknown key', { clients: { payments: { baseUrl: BASE } }, defaults: { timeOut: 5 } }, 'defaults.timeOut'],
  ['defaults.retry.maxAttempts 0', { clients: { payments: { baseUrl: BASE } }, defaults: { retry: { maxAttempts: 0 } } }, 'defaults.retry.maxAttempts'],
  ['defaults.circuitBreaker unknown key', { clients: { payments: { baseUrl: BASE } }, defaults: { circuitBreaker: { threshold: 3 } } }, 'defaults.circuitBreaker.threshold'],
  ['defaults.baseUrl not http', { clients: { payments: {} }, defaults: { baseUrl: 'ftp://files' } }, 'defaults.baseUrl'],
  // client: unknown keys and types
  ['unknown client key', client({ baseURL: BASE }), 'clients.payments.baseURL', 'payments'],
  ['baseUrl missing', { clients: { payments: { timeout: 5 } } }, 'clients.payments.baseUrl', 'payments'],
  ['baseUrl not a string', client({ baseUrl: 42 }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl empty', client({ baseUrl: '' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl not a URL', client({ baseUrl: 'payments.internal/v1' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl ftp', client({ baseUrl: 'ftp://payments.internal' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl file', client({ baseUrl: 'file:///etc/passwd' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl ws', client({ baseUrl: 'ws://payments.internal' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with a query string', client({ baseUrl: 'http://payments.internal/v1?key=1' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with an empty query', client({ baseUrl: 'http://payments.internal/v1?' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with a fragment', client({ baseUrl: 'http://payments.internal/v1#top' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with an empty fragment', client({ baseUrl: 'http://payments.internal/#' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with credentials', client({ baseUrl: 'http://user:secret@payments.internal' }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl with a user name', client({ baseUrl: 'https://user@payments.internal' }), 'clients.payments.baseUrl', 'payments'],
  ['timeout negative', client({ timeout: -1 }), 'clients.payments.timeout', 'payments'],
  ['timeout zero', client({ timeout: 0 }), 'clients.payments.timeout', 'payments'],
  ['timeout a string', client({ timeout: '5000' }), 'clients.payments.timeout', 'payments'],
  ['timeout NaN', client({ timeout: NaN }), 'clients.payments.timeout', 'payments'],
  ['timeout Infinity', client({ timeout: Infinity }), 'clients.payments.timeout', 'payments'],
  ['timeout past the timer limit', client({ timeout: 2 ** 31 }), 'clients.payments.timeout', 'payments'],
  ['totalTimeout negative', client({ totalTimeout: -30 }), 'clients.payments.totalTimeout', 'payments'],
  ['totalTimeout null', client({ totalTimeout: null }), 'clients.payments.totalTimeout', 'payments'],
  ['propagateRequestId a number', client({ propagateRequestId: 1 }), 'clients.payments.propagateRequestId', 'payments'],
  ['maxResponseBytes zero', client({ maxResponseBytes: 0 }), 'clients.payments.maxResponseBytes', 'payments'],
  ['maxResponseBytes negative', client({ maxResponseBytes: -1 }), 'clients.payments.maxResponseBytes', 'payments'],
  ['maxResponseBytes fractional', client({ maxResponseBytes: 1.5 }), 'clients.payments.maxResponseBytes', 'payments'],
  ['maxResponseBytes a string', client({ maxResponseBytes: '1mb' }), 'clients.payments.maxResponseBytes', 'payments'],
  // defaultHeaders
  ['defaultHeaders not an object', client({ defaultHeaders: 'x-api-key: 1' }), 'clients.payments.defaultHeaders', 'payments'],
  ['defaultHeaders value with CRLF', client({ defaultHeaders: { 'x-api-key': 'k\r\nHost: evil' } }), 'clients.payments.defaultHeaders.x-api-key', 'payments'],
  ['defaultHeaders value with LF', client({ defaultHeaders: { 'X-Tenant': 'a\nb' } }), 'clients.payments.defaultHeaders.X-Tenant', 'payments'],
  ['defaultHeaders value with CR', client({ defaultHeaders: { 'x-tenant': 'a\rb' } }), 'clients.payments.defaultHeaders.x-tenant', 'payments'],
  ['defaultHeaders array value with LF', client({ defaultHeaders: { 'x-tags': ['a', 'b\nc'] } }), 'clients.payments.defaultHeaders.x-tags', 'payments'],
  ['defaultHeaders name with a space', client({ defaultHeaders: { 'x api key': '1' } }), 'clients.payments.defaultHeaders.x api key', 'payments'],
  ['defaultHeaders value an object', client({ defaultHeaders: { 'x-api-key': { v: 1 } } }), 'clients.payments.defaultHeaders.x-api-key', 'payments'],
  // retry
  ['retry true', client({ retry: true }), 'clients.payments.retry', 'payments'],
  ['retry a number', client({ retry: 3 }), 'clients.payments.retry', 'payments'],
  ['retry unknown key', client({ retry: { attempts: 3 } }), 'clients.payments.retry.attempts', 'payments'],
  ['retry.maxAttempts 0', client({ retry: { maxAttempts: 0 } }), 'clients.payments.retry.maxAttempts', 'payments'],
  ['retry.maxAttempts negative', client({ retry: { maxAttempts: -2 } }), 'clients.payments.retry.maxAttempts', 'payments'],
  ['retry.maxAttempts fractional', client({ retry: { maxAttempts: 2.5 } }), 'clients.payments.retry.maxAttempts', 'payments'],
  ['retry.maxAttempts a string', client({ retry: { maxAttempts: '3' } }), 'clients.payments.retry.maxAttempts', 'payments'],
  ['retry.backoffInitialMs negative', client({ retry: { backoffInitialMs: -1 } }), 'clients.payments.retry.backoffInitialMs', 'payments'],
  ['retry.backoffMaxMs below backoffInitialMs', client({ retry: { backoffInitialMs: 500, backoffMaxMs: 100 } }), 'clients.payments.retry.backoffMaxMs', 'payments'],
  ['retry.backoffMaxMs below the default backoffInitialMs', client({ retry: { backoffMaxMs: 100 } }), 'clients.payments.retry.backoffMaxMs', 'payments'],
  ['retry.jitter half', client({ retry: { jitter: 'half' } }), 'clients.payments.retry.jitter', 'payments'],
  ['retry.jitter true', client({ retry: { jitter: true } }), 'clients.payments.retry.jitter', 'payments'],
  ['retry.statusCodes not an array', client({ retry: { statusCodes: 503 } }), 'clients.payments.retry.statusCodes', 'payments'],
  ['retry.statusCodes.0 below 100', client({ retry: { statusCodes: [99] } }), 'clients.payments.retry.statusCodes.0', 'payments'],
  ['retry.statusCodes.1 above 599', client({ retry: { statusCodes: [503, 600] } }), 'clients.payments.retry.statusCodes.1', 'payments'],
  ['retry.statusCodes.0 a string', client({ retry: { statusCodes: ['503'] } }), 'clients.payments.retry.statusCodes.0', 'payments'],
  ['retry.respectRetryAfter a string', client({ retry: { respectRetryAfter: 'yes' } }), 'clients.payments.retry.respectRetryAfter', 'payments'],
  ['retry.retryNonIdempotent a number', client({ retry: { retryNonIdempotent: 1 } }), 'clients.payments.retry.retryNonIdempotent', 'payments'],
  ['retry.budget true', client({ retry: { budget: true } }), 'clients.payments.retry.budget', 'payments'],
  ['retry.budget unknown key', client({ retry: { budget: { perSecond: 5 } } }), 'clients.payments.retry.budget.perSecond', 'payments'],
  ['retry.budget.ratio negative', client({ retry: { budget: { ratio: -0.1 } } }), 'clients.payments.retry.budget.ratio', 'payments'],
  ['retry.budget.minPerSecond a string', client({ retry: { budget: { minPerSecond: '10' } } }), 'clients.payments.retry.budget.minPerSecond', 'payments'],
  // circuitBreaker
  ['circuitBreaker true', client({ circuitBreaker: true }), 'clients.payments.circuitBreaker', 'payments'],
  ['circuitBreaker unknown key', client({ circuitBreaker: { resetMs: 10 } }), 'clients.payments.circuitBreaker.resetMs', 'payments'],
  ['circuitBreaker.failureThreshold 0', client({ circuitBreaker: { failureThreshold: 0 } }), 'clients.payments.circuitBreaker.failureThreshold', 'payments'],
  ['circuitBreaker.recoveryMs negative', client({ circuitBreaker: { recoveryMs: -1 } }), 'clients.payments.circuitBreaker.recoveryMs', 'payments'],
  ['circuitBreaker.halfOpenMaxProbes fractional', client({ circuitBreaker: { halfOpenMaxProbes: 1.5 } }), 'clients.payments.circuitBreaker.halfOpenMaxProbes', 'payments'],
  ['circuitBreaker.failureRatio 0', client({ circuitBreaker: { failureRatio: 0 } }), 'clients.payments.circuitBreaker.failureRatio', 'payments'],
  ['circuitBreaker.failureRatio over 1', client({ circuitBreaker: { failureRatio: 1.5 } }), 'clients.payments.circuitBreaker.failureRatio', 'payments'],
  ['circuitBreaker.failureRatio a percentage string', client({ circuitBreaker: { failureRatio: '30%' } }), 'clients.payments.circuitBreaker.failureRatio', 'payments'],
  ['circuitBreaker.failureRatio NaN', client({ circuitBreaker: { failureRatio: NaN } }), 'clients.payments.circuitBreaker.failureRatio', 'payments'],
  ['circuitBreaker.slowCallMs 0', client({ circuitBreaker: { slowCallMs: 0 } }), 'clients.payments.circuitBreaker.slowCallMs', 'payments'],
  ['circuitBreaker.slowCallMs Infinity', client({ circuitBreaker: { slowCallMs: Infinity } }), 'clients.payments.circuitBreaker.slowCallMs', 'payments'],
  ['circuitBreaker.slowCallRatio negative', client({ circuitBreaker: { slowCallMs: 100, slowCallRatio: -0.5 } }), 'clients.payments.circuitBreaker.slowCallRatio', 'payments'],
  ['circuitBreaker.slowCallRatio 0', client({ circuitBreaker: { slowCallMs: 100, slowCallRatio: 0 } }), 'clients.payments.circuitBreaker.slowCallRatio', 'payments'],
  ['circuitBreaker.minimumThroughput 0', client({ circuitBreaker: { failureRatio: 0.5, minimumThroughput: 0 } }), 'clients.payments.circuitBreaker.minimumThroughput', 'payments'],
  ['circuitBreaker.minimumThroughput fractional', client({ circuitBreaker: { minimumThroughput: 2.5 } }), 'clients.payments.circuitBreaker.minimumThroughput', 'payments'],
  ['circuitBreaker.samplingMs 0', client({ circuitBreaker: { samplingMs: 0 } }), 'clients.payments.circuitBreaker.samplingMs', 'payments'],
  ['circuitBreaker.samplingMs a string', client({ circuitBreaker: { samplingMs: '10s' } }), 'clients.payments.circuitBreaker.samplingMs', 'payments'],
  ['circuitBreaker.recoveryMaxMs below recoveryMs', client({ circuitBreaker: { recoveryMs: 5_000, recoveryMaxMs: 1_000 } }), 'clients.payments.circuitBreaker.recoveryMaxMs', 'payments'],
  ['circuitBreaker.recoveryMaxMs below the default recoveryMs', client({ circuitBreaker: { recoveryMaxMs: 10_000 } }), 'clients.payments.circuitBreaker.recoveryMaxMs', 'payments'],
  ['circuitBreaker.recoveryMaxMs negative', client({ circuitBreaker: { recoveryMaxMs: -1 } }), 'clients.payments.circuitBreaker.recoveryMaxMs', 'payments'],
  ['defaults.circuitBreaker.failureRatio over 1', { clients: { payments: { baseUrl: BASE } }, defaults: { circuitBreaker: { failureRatio: 2 } } }, 'defaults.circuitBreaker.failureRatio'],
  ['a default recoveryMaxMs below a client\'s recoveryMs', { clients: { payments: { baseUrl: BASE, circuitBreaker: { recoveryMs: 90_000 } } }, defaults: { circuitBreaker: { recoveryMaxMs: 60_000 } } }, 'clients.payments.circuitBreaker.recoveryMaxMs', 'payments'],
  // pool and dispatcher
  ['pool not an object', client({ pool: 10 }), 'clients.payments.pool', 'payments'],
  ['pool.connections rejected by undici', client({ pool: { connections: -1 } }), 'clients.payments.pool', 'payments'],
  ['pool.connect rejected by undici', client({ pool: { connect: 'tls' } }), 'clients.payments.pool', 'payments'],
  ['pool.keepAliveTimeout rejected by undici', client({ pool: { keepAliveTimeout: -1 } }), 'clients.payments.pool', 'payments'],
  ['pool.bodyTimeout rejected by undici', client({ pool: { bodyTimeout: -1 } }), 'clients.payments.pool', 'payments'],
  ['pool.headersTimeout rejected by undici', client({ pool: { headersTimeout: 'soon' } }), 'clients.payments.pool', 'payments'],
  ['dispatcher a plain object', client({ dispatcher: { request () {} } }), 'clients.payments.dispatcher', 'payments'],
  ['dispatcher a string', client({ dispatcher: 'global' }), 'clients.payments.dispatcher', 'payments'],
  // timeout against totalTimeout, set or default
  ['timeout above the default totalTimeout', client({ timeout: 60_000 }), 'clients.payments.timeout', 'payments'],
  ['timeout above the given totalTimeout', client({ timeout: 5_000, totalTimeout: 1_000 }), 'clients.payments.timeout', 'payments'],
  ['defaults.timeout above defaults.totalTimeout', { clients: { payments: { baseUrl: BASE } }, defaults: { timeout: 5_000, totalTimeout: 1_000 } }, 'defaults.timeout'],
  ['defaults.timeout above the default totalTimeout of a client', { clients: { payments: { baseUrl: BASE } }, defaults: { timeout: 60_000 } }, 'clients.payments.timeout', 'payments'],
  ['a client totalTimeout below defaults.timeout', { clients: { payments: { baseUrl: BASE, totalTimeout: 1_000 } }, defaults: { timeout: 2_000 } }, 'clients.payments.timeout', 'payments'],
  // defaultHeaders: an unset environment variable
  ['defaultHeaders value undefined', client({ defaultHeaders: { 'x-api-key': undefined } }), 'clients.payments.defaultHeaders.x-api-key', 'payments'],
  ['defaults.defaultHeaders value undefined', { clients: { payments: { baseUrl: BASE } }, defaults: { defaultHeaders: { 'x-api-key': undefined } } }, 'defaults.defaultHeaders.x-api-key'],
  ['defaultHeaders value undefined over a default', { clients: { payments: { baseUrl: BASE, defaultHeaders: { 'X-Api-Key': undefined } } }, defaults: { defaultHeaders: { 'x-api-key': 'k' } } }, 'clients.payments.defaultHeaders.X-Api-Key', 'payments'],
  // pool keys
  ['pool unknown key (a typo)', client({ pool: { conections: 4 } }), 'clients.payments.pool.conections', 'payments'],
  ['pool option undici removed', client({ pool: { keepAlive: true } }), 'clients.payments.pool.keepAlive', 'payments'],
  ['pool option of another dispatcher', client({ pool: { maxRedirections: 3 } }), 'clients.payments.pool.maxRedirections', 'payments'],
  ['defaults.pool unknown key', { clients: { payments: { baseUrl: BASE } }, defaults: { pool: { size: 4 } } }, 'defaults.pool.size'],
  // baseUrl: URL objects and replicas
  ['baseUrl a URL with a query', client({ baseUrl: new URL('http://payments.internal/v1?key=1') }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl a URL with an empty query', client({ baseUrl: new URL('http://payments.internal/v1?') }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl a URL with ftp', client({ baseUrl: new URL('ftp://payments.internal') }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl an empty array', client({ baseUrl: [] }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl an array with a bad entry', client({ baseUrl: ['http://a:1', 'ftp://b'] }), 'clients.payments.baseUrl.1', 'payments'],
  ['baseUrl an array with a non-URL', client({ baseUrl: ['http://a:1', 7] }), 'clients.payments.baseUrl.1', 'payments'],
  ['baseUrl replicas with different base paths', client({ baseUrl: ['http://a:1/v1', 'http://b:1/v2'] }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl replicas, one without the base path', client({ baseUrl: ['http://a:1/v1', 'http://b:1'] }), 'clients.payments.baseUrl', 'payments'],
  ['baseUrl replicas with a duplicate', client({ baseUrl: ['http://a:80/v1', 'http://A/v1/'] }), 'clients.payments.baseUrl', 'payments'],
  // circuitBreaker.openOnRetryAfter
  ['circuitBreaker.openOnRetryAfter a string', client({ circuitBreaker: { openOnRetryAfter: 'yes' } }), 'clients.payments.circuitBreaker.openOnRetryAfter', 'payments'],
  // hedge
  ['hedge true', client({ hedge: true }), 'clients.payments.hedge', 'payments'],
  ['hedge a number', client({ hedge: 50 }), 'clients.payments.hedge', 'payments'],
  ['hedge unknown key', client({ hedge: { delay: 50 } }), 'clients.payments.hedge.delay', 'payments'],
  ['hedge.delayMs 0', client({ hedge: { delayMs: 0 } }), 'clients.payments.hedge.delayMs', 'payments'],
  ['hedge.delayMs negative', client({ hedge: { delayMs: -5 } }), 'clients.payments.hedge.delayMs', 'payments'],
  ['hedge.delayMs another word', client({ hedge: { delayMs: 'p95' } }), 'clients.payments.hedge.delayMs', 'payments'],
  ['hedge.maxHedges 0', client({ hedge: { maxHedges: 0 } }), 'clients.payments.hedge.maxHedges', 'payments'],
  ['hedge.maxHedges 4', client({ hedge: { maxHedges: 4 } }), 'clients.payments.hedge.maxHedges', 'payments'],
  ['hedge.maxHedges fractional', client({ hedge: { maxHedges: 1.5 } }), 'clients.payments.hedge.maxHedges', 'payments'],
  ['defaults.hedge.maxHedges 9', { clients: { payments: { baseUrl: BASE } }, defaults: { hedge: { maxHedges: 9 } } }, 'defaults.hedge.maxHedges'],
  // maxInFlight
  ['maxInFlight 0', client({ maxInFlight: 0 }), 'clients.payments.maxInFlight', 'payments'],
  ['maxInFlight negative', client({ maxInFlight: -1 }), 'clients.payments.maxInFlight', 'payments'],
  ['maxInFlight fractional', client({ maxInFlight: 2.5 }), 'clients.payments.maxInFlight', 'payments'],
  ['maxInFlight Infinity', client({ maxInFlight: Infinity }), 'clients.payments.maxInFlight', 'payments'],
  ['maxInFlight true', client({ maxInFlight: true }), 'clients.payments.maxInFlight', 'payments'],
  ['maxInFlight a string', client({ maxInFlight: '100' }), 'clients.payments.maxInFlight', 'payments'],
  // adaptiveConcurrency
  ['adaptiveConcurrency a string', client({ adaptiveConcurrency: 'on' }), 'clients.payments.adaptiveConcurrency', 'payments'],
  ['adaptiveConcurrency unknown key', client({ adaptiveConcurrency: { start: 5 } }), 'clients.payments.adaptiveConcurrency.start', 'payments'],
  ['adaptiveConcurrency.initial 0', client({ adaptiveConcurrency: { initial: 0 } }), 'clients.payments.adaptiveConcurrency.initial', 'payments'],
  ['adaptiveConcurrency.min fractional', client({ adaptiveConcurrency: { min: 1.5 } }), 'clients.payments.adaptiveConcurrency.min', 'payments'],
  ['adaptiveConcurrency.max a string', client({ adaptiveConcurrency: { max: '100' } }), 'clients.payments.adaptiveConcurrency.max', 'payments'],
  ['adaptiveConcurrency.min above max', client({ adaptiveConcurrency: { min: 50, max: 10 } }), 'clients.payments.adaptiveConcurrency.min', 'payments'],
  ['adaptiveConcurrency.initial above max', client({ adaptiveConcurrency: { initial: 50, max: 40 } }), 'clients.payments.adaptiveConcurrency.initial', 'payments'],
  ['adaptiveConcurrency.initial below min', client({ adaptiveConcurrency: { initial: 5, min: 10 } }), 'clients.payments.adaptiveConcurrency.initial', 'payments'],
  ['adaptiveConcurrency.initial above maxInFlight', client({ maxInFlight: 10, adaptiveConcurrency: { initial: 50 } }), 'clients.payments.adaptiveConcurrency.initial', 'payments'],
  // outlierDetection
  ['outlierDetection with one baseUrl', client({ outlierDetection: {} }), 'clients.payments.outlierDetection', 'payments'],
  ['outlierDetection with a one-entry array', client({ baseUrl: [BASE], outlierDetection: { consecutiveFailures: 3 } }), 'clients.payments.outlierDetection', 'payments'],
  ['outlierDetection true', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: true }), 'clients.payments.outlierDetection', 'payments'],
  ['outlierDetection unknown key', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { failures: 3 } }), 'clients.payments.outlierDetection.failures', 'payments'],
  ['outlierDetection.consecutiveFailures 0', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { consecutiveFailures: 0 } }), 'clients.payments.outlierDetection.consecutiveFailures', 'payments'],
  ['outlierDetection.baseEjectionMs 0', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { baseEjectionMs: 0 } }), 'clients.payments.outlierDetection.baseEjectionMs', 'payments'],
  ['outlierDetection.maxEjectedPercent above 100', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { maxEjectedPercent: 101 } }), 'clients.payments.outlierDetection.maxEjectedPercent', 'payments'],
  ['outlierDetection.maxEjectedPercent negative', client({ baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { maxEjectedPercent: -1 } }), 'clients.payments.outlierDetection.maxEjectedPercent', 'payments'],
  ['defaults.outlierDetection invalid', { clients: { payments: { baseUrl: BASE } }, defaults: { outlierDetection: { consecutiveFailures: 0 } } }, 'defaults.outlierDetection.consecutiveFailures'],
  // plugin deadline
  ['deadline a string', { clients: { payments: { baseUrl: BASE } }, deadline: 'yes' }, 'deadline'],
  ['deadline unknown key', { clients: { payments: { baseUrl: BASE } }, deadline: { headr: 'x-budget' } }, 'deadline.headr'],
  ['deadline.header not a header name', { clients: { payments: { baseUrl: BASE } }, deadline: { header: 'x budget' } }, 'deadline.header'],
  ['deadline.header the request id header', { clients: { payments: { baseUrl: BASE } }, deadline: { header: 'X-Request-Id' } }, 'deadline.header'],
  ['deadline.forward a number', { clients: { payments: { baseUrl: BASE } }, deadline: { forward: 1 } }, 'deadline.forward'],
  // the failing client is named, not the first one
  ['second client invalid', { clients: { users: { baseUrl: BASE }, payments: { baseUrl: BASE, retry: { maxAttempts: 0 } } } }, 'clients.payments.retry.maxAttempts', 'payments']
]

test('every invalid option fails registration with InvalidOptionsError naming it', async (t) => {
  for (const [description, options, option, clientName] of cases) {
    await t.test(description, async (t) => {
      assertInvalidOption(t, await registrationError(t, options), option, clientName)
    })
  }
})

test('a bad default names the option, not a client', async (t) => {
  const error = await registrationError(t, { clients: { payments: { baseUrl: BASE } }, defaults: { hedge: { maxHedges: 9 } } }) as InvalidOptionsError
  t.equal(error.option, 'defaults.hedge.maxHedges')
  t.equal(error.clientName, undefined)
  t.equal(error.message, 'Invalid option defaults.hedge.maxHedges: must be between 1 and 3, got 9')
})

test('a registration that failed decorates nothing and sends nothing', async (t) => {
  const upstream = await startUpstream((_req, res) => sendJson(res, 200, {}))
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(resilientHttp, { clients: { users: { baseUrl: upstream.url }, payments: { baseUrl: upstream.url, timeout: -1 } } })
  const error = await rejection(app.ready())
  assertInvalidOption(t, error, 'clients.payments.timeout', 'payments')
  t.equal(app.hasDecorator('httpClients'), false)
  t.equal(upstream.hits.length, 0)
})

test('valid edge values are accepted', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    defaults: { retry: false, circuitBreaker: false },
    requestIdHeader: 'X-Correlation-Id',
    echoRequestId: false,
    propagateHeaders: ['traceparent', 'Tracestate'],
    clients: {
      _internal: { baseUrl: 'https://internal.example/' },
      $api: { baseUrl: 'http://127.0.0.1:8080/v1/', retry: { maxAttempts: 1, backoffInitialMs: 0, backoffMaxMs: 0, jitter: 'none', statusCodes: [] } },
      users2: { baseUrl: 'http://[::1]:3000', maxResponseBytes: 1, pool: { connections: 2, pipelining: 1 }, dispatcher: new MockAgent() }
    }
  })
  await app.ready()
  t.same(Object.keys(app.httpClients), ['_internal', '$api', 'users2'])
})

test('defaults merge deeply under each client', async (t) => {
  t.test('in the resolved options', async (t) => {
    const resolved = resolvePluginOptions({
      defaults: {
        timeout: 1_000,
        retry: { maxAttempts: 5, budget: { ratio: 0.5 } },
        circuitBreaker: { failureThreshold: 2 },
        pool: { connections: 4 },
        defaultHeaders: { 'x-tenant': 'base', 'x-default-only': '1' }
      },
      clients: {
        payments: {
          baseUrl: BASE,
          retry: { backoffInitialMs: 7, budget: { minPerSecond: 3 } },
          circuitBreaker: { recoveryMs: 99 },
          pool: { pipelining: 2 },
          defaultHeaders: { 'X-Tenant': 'acme' }
        },
        users: { baseUrl: BASE, timeout: 2_000, retry: false, circuitBreaker: false },
        orders: { baseUrl: BASE }
      }
    })
    const [payments, users, orders] = resolved.clients
    t.equal(payments.timeout, 1_000)
    t.match(payments.retry, { maxAttempts: 5, backoffInitialMs: 7, backoffMaxMs: 10_000, jitter: 'full', budget: { ratio: 0.5, minPerSecond: 3 } })
    t.match(payments.circuitBreaker, { failureThreshold: 2, recoveryMs: 99, halfOpenMaxProbes: 1 })
    t.match(payments.pool, { connections: 4, pipelining: 2 })
    t.same(payments.defaultHeaders, ['x-default-only', '1', 'x-tenant', 'acme'])
    t.equal(users.timeout, 2_000)
    t.equal(users.retry, false)
    t.equal(users.circuitBreaker, false)
    t.match(orders.retry, { maxAttempts: 5, backoffInitialMs: 200, budget: { ratio: 0.5, minPerSecond: 10 } })
    t.match(orders.circuitBreaker, { failureThreshold: 2, recoveryMs: 30_000 })
  })

  t.test('a default retry: false is replaced by a client retry object', async (t) => {
    const resolved = resolvePluginOptions({ defaults: { retry: false }, clients: { a: { baseUrl: BASE, retry: { maxAttempts: 2 } } } })
    t.match(resolved.clients[0].retry, { maxAttempts: 2, backoffInitialMs: 200 })
  })

  t.test('in behaviour: defaults.retry and the client backoff both apply', async (t) => {
    const upstream = await startUpstream((_req, res) => sendJson(res, 503, { down: true }))
    t.teardown(() => upstream.close())
    const waits: number[] = []
    const onRetry = (message: unknown): void => {
      const event = message as RetryEvent
      if (event.client === 'payments' && event.path === '/health') waits.push(event.waitMs)
    }
    diagnosticsChannel.subscribe(CHANNELS.retry, onRetry)
    t.teardown(() => diagnosticsChannel.unsubscribe(CHANNELS.retry, onRetry))
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(resilientHttp, {
      defaults: { retry: { maxAttempts: 4, jitter: 'none' }, circuitBreaker: false },
      clients: { payments: { baseUrl: upstream.url, retry: { backoffInitialMs: 1, backoffMaxMs: 2 } } }
    })
    const res = await app.httpClients.payments.get('/health')
    t.equal(res.statusCode, 503)
    // 4 attempts (the default's maxAttempts, not the built-in 3), with the
    // client's backoff and the default's jitter: 1, 2, then capped at 2.
    t.equal(res.attempts, 4)
    t.equal(upstream.hits.length, 4)
    t.same(waits, [1, 2, 2])
  })
})

test('defaultHeaders merge without regard to case: the client X-Tenant replaces the default x-tenant on the wire', async (t) => {
  const seen: IncomingMessage['rawHeaders'][] = []
  const upstream = await startUpstream((req, res) => {
    seen.push(req.rawHeaders)
    sendJson(res, 200, {})
  })
  t.teardown(() => upstream.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, {
    defaults: { defaultHeaders: { 'x-tenant': 'default-tenant', 'x-from-defaults': 'yes' } },
    clients: {
      payments: { baseUrl: upstream.url, defaultHeaders: { 'X-Tenant': 'acme' } },
      users: { baseUrl: upstream.url }
    }
  })
  await app.httpClients.payments.get('/a')
  await app.httpClients.users.get('/b')
  t.equal(upstream.hits.length, 2)
  t.equal(upstream.hits[0].headers['x-tenant'], 'acme')
  t.equal(upstream.hits[0].headers['x-from-defaults'], 'yes')
  const tenantLines = (raw: string[]): string[] => raw.filter((_v, i) => i % 2 === 0 && raw[i].toLowerCase() === 'x-tenant')
  t.equal(tenantLines(seen[0]).length, 1, 'one x-tenant header line')
  t.equal(upstream.hits[1].headers['x-tenant'], 'default-tenant')
  t.equal(upstream.hits[1].headers['x-from-defaults'], 'yes')
})

test('registering the plugin twice in one scope fails clearly', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(resilientHttp, { clients: { users: { baseUrl: BASE } } })
  app.register(resilientHttp, { clients: { payments: { baseUrl: BASE } } })
  const error = await rejection(app.ready())
  t.type(error, InvalidOptionsError)
  t.equal((error as InvalidOptionsError).code, 'FRH_INVALID_OPTIONS')
  t.match((error as Error).message, /already registered/)
})

test('an unknown client name throws an error naming the registered clients', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { payments: { baseUrl: BASE }, users: { baseUrl: BASE } } })
  await app.ready()
  t.ok(app.httpClients.payments)
  t.equal(app.httpClients.users.name, 'users')
  const error = t.throws(() => app.httpClients.paymnets) as Error
  t.ok(error instanceof InvalidRequestError, 'InvalidRequestError')
  t.equal((error as InvalidRequestError).statusCode, 500)
  t.match(error.message, /"paymnets"/)
  t.match(error.message, /payments, users/)
  t.same(Object.keys(app.httpClients), ['payments', 'users'])
  t.equal('paymnets' in app.httpClients, false)
})

test('createHttpClient validates its own options', async (t) => {
  const cases: Array<[string, unknown, string]> = [
    ['options missing', undefined, 'options'],
    ['options null', null, 'options'],
    ['name missing', { baseUrl: BASE }, 'name'],
    ['name empty', { name: '', baseUrl: BASE }, 'name'],
    ['name a number', { name: 7, baseUrl: BASE }, 'name'],
    ['logger without warn()', { name: 'users', baseUrl: BASE, logger: { info () {} } }, 'logger'],
    ['logger a string', { name: 'users', baseUrl: BASE, logger: 'console' }, 'logger'],
    ['baseUrl missing', { name: 'users' }, 'baseUrl'],
    ['baseUrl with a query', { name: 'users', baseUrl: 'http://users/?a=1' }, 'baseUrl'],
    ['unknown key', { name: 'users', baseUrl: BASE, retries: 3 }, 'retries'],
    ['retry.maxAttempts 0', { name: 'users', baseUrl: BASE, retry: { maxAttempts: 0 } }, 'retry.maxAttempts'],
    ['circuitBreaker unknown key', { name: 'users', baseUrl: BASE, circuitBreaker: { x: 1 } }, 'circuitBreaker.x'],
    ['pool rejected by undici', { name: 'users', baseUrl: BASE, pool: { connections: -1 } }, 'pool'],
    ['pool rejected by undici client', { name: 'users', baseUrl: BASE, pool: { keepAliveTimeout: -1 } }, 'pool'],
    ['dispatcher not a dispatcher', { name: 'users', baseUrl: BASE, dispatcher: {} }, 'dispatcher']
  ]
  for (const [description, options, option] of cases) {
    const error = t.throws(() => createHttpClient(options as never), description)
    t.type(error, InvalidOptionsError, description)
    t.equal((error as InvalidOptionsError).code, 'FRH_INVALID_OPTIONS', description)
    t.equal((error as InvalidOptionsError).option, option, description)
  }
})

test('createHttpClient works without Fastify, with or without a logger', async (t) => {
  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { url: hit.url }))
  t.teardown(() => upstream.close())
  const lines: string[] = []
  const logger = pino({ level: 'debug' }, { write: (line: string) => { lines.push(line) } })
  const withLogger = createHttpClient({ name: 'users', baseUrl: `${upstream.url}/api`, logger, retry: { backoffInitialMs: 1, backoffMaxMs: 1 } })
  const silent = createHttpClient({ name: 'silent', baseUrl: upstream.url })
  t.teardown(() => withLogger.close())
  t.teardown(() => silent.close())
  t.equal(withLogger.name, 'users')
  t.same(await (await withLogger.get('/me')).json(), { url: '/api/me' })
  t.same(await (await silent.get('/ping')).json(), { url: '/ping' })
  t.equal(upstream.hits.length, 2)
})

test('a given dispatcher is used instead of an own pool', async (t) => {
  const upstream = await startUpstream((_req, res) => sendJson(res, 200, { via: 'agent' }))
  t.teardown(() => upstream.close())
  const agent = new Agent()
  t.teardown(() => agent.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { users: { baseUrl: upstream.url, dispatcher: agent } } })
  const res = await app.httpClients.users.get('/x')
  t.same(await res.json(), { via: 'agent' })
  t.equal(upstream.hits.length, 1)
})

test('the resolved options of a plain client carry every default', async (t) => {
  const [payments] = resolvePluginOptions({ clients: { payments: { baseUrl: 'https://payments.internal/v1/' } } }).clients
  t.same(payments.origins, ['https://payments.internal'])
  t.equal(payments.basePath, '/v1')
  t.equal(payments.timeout, 10_000)
  t.equal(payments.totalTimeout, 30_000)
  t.same(payments.circuitBreaker, {
    failureThreshold: 5,
    recoveryMs: 30_000,
    halfOpenMaxProbes: 1,
    openOnRetryAfter: true,
    failureRatio: undefined,
    slowCallMs: undefined,
    slowCallRatio: 0.5,
    minimumThroughput: 20,
    samplingMs: 10_000,
    recoveryMaxMs: 30_000
  })
  t.same(payments.pool, { connections: 128 })
  t.equal(payments.hedge, false)
  t.equal(payments.maxInFlight, 1_000)
  t.equal(payments.adaptiveConcurrency, false)
  t.equal(payments.outlierDetection, false)
  t.equal(payments.dispatcher, undefined)
  t.ok(Object.isFrozen(payments))
  t.ok(Object.isFrozen(payments.origins))
})

test('timeout and totalTimeout', async (t) => {
  const resolve = (options: Record<string, unknown>, defaults?: Record<string, unknown>) =>
    resolvePluginOptions({ defaults, clients: { a: { baseUrl: BASE, ...options } } }).clients[0]
  t.match(resolve({ totalTimeout: 5_000 }), { timeout: 5_000, totalTimeout: 5_000 }, 'the default timeout is lowered to a smaller total')
  t.match(resolve({ totalTimeout: 60_000 }), { timeout: 10_000, totalTimeout: 60_000 })
  t.match(resolve({ timeout: 30_000 }), { timeout: 30_000, totalTimeout: 30_000 }, 'equal to the default total is fine')
  t.match(resolve({ timeout: 60_000, totalTimeout: 90_000 }), { timeout: 60_000, totalTimeout: 90_000 })
  t.match(resolve({ totalTimeout: 90_000 }, { timeout: 60_000 }), { timeout: 60_000, totalTimeout: 90_000 }, 'a default timeout fits a client that raises its total')
  const error = t.throws(() => createHttpClient({ name: 'users', baseUrl: BASE, timeout: 60_000 })) as InvalidOptionsError
  t.equal(error.option, 'timeout')
  t.match(error.message, /default totalTimeout \(30000\)/)
})

test('baseUrl: a URL object, or replicas', async (t) => {
  const resolve = (baseUrl: unknown) => resolvePluginOptions({ clients: { a: { baseUrl } } }).clients[0]
  t.match(resolve(new URL('http://users:8080/api/')), { origins: ['http://users:8080'], basePath: '/api' })
  const replicas = resolve(['http://10.0.0.5:8080/v1', new URL('http://10.0.0.6:8080/v1/'), 'HTTP://10.0.0.7:8080/v1'])
  t.same(replicas.origins, ['http://10.0.0.5:8080', 'http://10.0.0.6:8080', 'http://10.0.0.7:8080'])
  t.equal(replicas.basePath, '/v1')
  t.same(replicas.outlierDetection, { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectedPercent: 50 }, 'outlier detection is on for replicas')
  t.match(resolve(['http://a', 'http://a:8080']), { origins: ['http://a', 'http://a:8080'], basePath: '' }, 'ports tell replicas apart')
  t.match(resolve(['http://a/v1']), { origins: ['http://a'], basePath: '/v1', outlierDetection: false }, 'one entry is one origin')
})

test('hedge, maxInFlight and adaptiveConcurrency', async (t) => {
  const resolve = (options: Record<string, unknown>) => resolvePluginOptions({ clients: { a: { baseUrl: BASE, ...options } } }).clients[0]
  t.same(resolve({ hedge: {} }).hedge, { delayMs: 'auto', maxHedges: 1 })
  t.same(resolve({ hedge: { delayMs: 50, maxHedges: 3 } }).hedge, { delayMs: 50, maxHedges: 3 })
  t.same(resolve({ hedge: { delayMs: 'auto' } }).hedge, { delayMs: 'auto', maxHedges: 1 })
  t.equal(resolve({ hedge: false }).hedge, false)
  t.equal(resolve({ maxInFlight: false }).maxInFlight, Infinity)
  t.equal(resolve({ maxInFlight: 1 }).maxInFlight, 1)
  t.same(resolve({ adaptiveConcurrency: true }).adaptiveConcurrency, { initial: 20, min: 1, max: 1_000 })
  t.same(resolve({ maxInFlight: false, adaptiveConcurrency: true }).adaptiveConcurrency, { initial: 20, min: 1, max: 1_000 })
  t.same(resolve({ maxInFlight: 500, adaptiveConcurrency: {} }).adaptiveConcurrency, { initial: 20, min: 1, max: 500 }, 'max follows maxInFlight')
  t.same(resolve({ maxInFlight: 10, adaptiveConcurrency: true }).adaptiveConcurrency, { initial: 10, min: 1, max: 10 }, 'the default start fits a small max')
  t.same(resolve({ adaptiveConcurrency: { min: 30 } }).adaptiveConcurrency, { initial: 30, min: 30, max: 1_000 }, 'the default start fits a larger min')
  t.same(resolve({ adaptiveConcurrency: { initial: 5, min: 5, max: 5 } }).adaptiveConcurrency, { initial: 5, min: 5, max: 5 })
  t.equal(resolve({ adaptiveConcurrency: false }).adaptiveConcurrency, false)
  t.match(resolve({ circuitBreaker: { openOnRetryAfter: false } }).circuitBreaker, { openOnRetryAfter: false, failureThreshold: 5 })
})

test('circuitBreaker: the ratio rules and recoveryMaxMs', async (t) => {
  const resolve = (options: Record<string, unknown>, defaults?: Record<string, unknown>) =>
    resolvePluginOptions({ defaults, clients: { a: { baseUrl: BASE, ...options } } }).clients[0].circuitBreaker
  t.match(resolve({ circuitBreaker: { failureRatio: 0.3 } }), { failureRatio: 0.3, slowCallMs: undefined, minimumThroughput: 20, samplingMs: 10_000 })
  t.match(resolve({ circuitBreaker: { failureRatio: 1 } }), { failureRatio: 1 }, 'every attempt failing is a ratio')
  t.match(resolve({ circuitBreaker: { slowCallMs: 2_000 } }), { slowCallMs: 2_000, slowCallRatio: 0.5, failureRatio: undefined })
  t.match(resolve({ circuitBreaker: { slowCallMs: 500, slowCallRatio: 1, minimumThroughput: 5, samplingMs: 60_000 } }),
    { slowCallMs: 500, slowCallRatio: 1, minimumThroughput: 5, samplingMs: 60_000 })
  t.match(resolve({ circuitBreaker: { recoveryMs: 5_000 } }), { recoveryMs: 5_000, recoveryMaxMs: 5_000 }, 'recoveryMaxMs follows recoveryMs')
  t.match(resolve({ circuitBreaker: { recoveryMs: 5_000, recoveryMaxMs: 5_000 } }), { recoveryMaxMs: 5_000 }, 'equal to recoveryMs is fine')
  t.match(resolve({ circuitBreaker: { recoveryMaxMs: 300_000 } }), { recoveryMs: 30_000, recoveryMaxMs: 300_000 })
  t.match(resolve({ circuitBreaker: { recoveryMs: 1_000 } }, { circuitBreaker: { failureRatio: 0.25, recoveryMaxMs: 60_000 } }),
    { recoveryMs: 1_000, recoveryMaxMs: 60_000, failureRatio: 0.25 }, 'merged with defaults')
  t.match(resolve({ circuitBreaker: { recoveryMs: 2_000 } }, { circuitBreaker: { recoveryMaxMs: 8_000 } }),
    { recoveryMs: 2_000, recoveryMaxMs: 8_000 }, 'a default recoveryMaxMs below the default recoveryMs fits a client that lowers recoveryMs')
  const error = t.throws(() => createHttpClient({ name: 'users', baseUrl: BASE, circuitBreaker: { failureRatio: 0 } })) as InvalidOptionsError
  t.equal(error.option, 'circuitBreaker.failureRatio')
  t.match(error.message, /more than 0/)
  const cap = t.throws(() => createHttpClient({ name: 'users', baseUrl: BASE, circuitBreaker: { recoveryMs: 2_000, recoveryMaxMs: 1_000 } })) as InvalidOptionsError
  t.match(cap.message, /must not be less than recoveryMs \(2000\), got 1000/)
})

test('outlierDetection: merged from defaults for the clients with replicas only', async (t) => {
  const { clients: [single, replicated, off] } = resolvePluginOptions({
    defaults: { outlierDetection: { consecutiveFailures: 3 } },
    clients: {
      single: { baseUrl: BASE },
      replicated: { baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: { maxEjectedPercent: 100 } },
      off: { baseUrl: ['http://a:1', 'http://b:1'], outlierDetection: false }
    }
  })
  t.equal(single.outlierDetection, false)
  t.same(replicated.outlierDetection, { consecutiveFailures: 3, baseEjectionMs: 30_000, maxEjectedPercent: 100 })
  t.equal(off.outlierDetection, false)
})

test('the plugin deadline option', async (t) => {
  const resolve = (deadline: unknown) => resolvePluginOptions({ clients: { a: { baseUrl: BASE } }, deadline }).deadline
  t.equal(resolve(undefined), false)
  t.equal(resolve(false), false)
  t.same(resolve(true), { header: 'x-request-timeout-ms', forward: true })
  t.same(resolve({}), { header: 'x-request-timeout-ms', forward: true })
  t.same(resolve({ header: 'X-Budget-Ms', forward: false }), { header: 'x-budget-ms', forward: false })
})

test('pool takes exactly the options of undici Pool and Client', async (t) => {
  // Read undici's own type declarations, so a new undici option is noticed here.
  const undiciTypes = path.join(path.dirname(require.resolve('undici')), 'types')
  const keys = new Map<string, boolean>()
  for (const file of ['pool.d.ts', 'client.d.ts']) {
    const source = readFileSync(path.join(undiciTypes, file), 'utf8')
    const block = /export interface Options(?: extends [\w.]+)? \{([\s\S]*?)\n {2}\}/.exec(source)
    t.ok(block, `${file} declares Options`)
    for (const [, name, type] of (block as RegExpExecArray)[1].matchAll(/^ {4}(\w+)\??\s*(?:\(|:\s*([^;]+))/gm)) {
      keys.set(name, type?.trim() !== 'never')
    }
  }
  t.ok(keys.size > 20, `found ${keys.size} options`)
  for (const [key, allowed] of keys) {
    const attempt = () => resolvePluginOptions({ clients: { a: { baseUrl: BASE, pool: { [key]: undefined } } } })
    if (allowed) {
      t.doesNotThrow(attempt, `pool.${key} is accepted`)
    } else {
      const error = t.throws(attempt, `pool.${key} (never in undici's types) is refused`) as InvalidOptionsError
      t.equal(error.option, `clients.a.pool.${key}`)
    }
  }
  const [a] = resolvePluginOptions({ clients: { a: { baseUrl: BASE, pool: { pipelining: 2, keepAliveTimeout: 1_000 } } } }).clients
  t.same(a.pool, { connections: 128, pipelining: 2, keepAliveTimeout: 1_000 })
})

test('resolveHedge merges a per-call override over the client\'s hedging', async (t) => {
  const fail = (option: string, reason: string): never => { throw new Error(`${option} ${reason}`) }
  const base = { delayMs: 50, maxHedges: 2 } as const
  t.equal(resolveHedge(undefined, base, 'hedge', fail), base)
  t.equal(resolveHedge(undefined, false, 'hedge', fail), false)
  t.equal(resolveHedge(false, base, 'hedge', fail), false)
  t.same(resolveHedge({ maxHedges: 1 }, base, 'hedge', fail), { delayMs: 50, maxHedges: 1 })
  t.same(resolveHedge({}, false, 'hedge', fail), { delayMs: 'auto', maxHedges: 1 }, 'a call can hedge on a client that does not')
  t.throws(() => resolveHedge({ maxHedges: 5 }, base, 'hedge', fail), /hedge\.maxHedges must be between 1 and 3/)
  t.throws(() => resolveHedge({ delay: 5 }, base, 'hedge', fail), /hedge\.delay unknown option/)
  t.throws(() => resolveHedge(true, base, 'hedge', fail), /hedge must be an object/)
})

test('pool: an undefined key keeps the default, null is undici\'s own choice', async (t) => {
  const resolve = (pool: unknown) => resolvePluginOptions({ clients: { a: { baseUrl: BASE, pool } } }).clients[0].pool
  t.same(resolve({ connections: undefined }), { connections: 128 })
  t.same(resolve({ connections: null }), { connections: null })
  t.same(resolve({ connections: 4 }), { connections: 4 })
})

test('option edges: messages, null-prototype objects, undefined values, missing options', async (t) => {
  const shared = t.throws(() => createHttpClient({ name: 'a', baseUrl: ['http://a:1', 'http://b:1/v1'] })) as InvalidOptionsError
  t.match(shared.message, /entry 0 has "\/", entry 1 has "\/v1"/)
  const long = t.throws(() => createHttpClient({ name: 'a', baseUrl: 'http://a:1', retry: { jitter: 'x'.repeat(50) as 'full' } })) as InvalidOptionsError
  t.match(long.message, /…/, 'a long value is shortened in the message')
  const bare = Object.assign(Object.create(null) as Record<string, unknown>, { baseUrl: 'http://a:1' })
  t.equal(createHttpClient({ name: 'bare', ...bare } as never).name, 'bare', 'a null-prototype object is a plain object')

  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { a: { baseUrl: 'http://a:1', timeout: undefined } } })
  await app.ready()
  t.equal(app.httpClients.a.name, 'a', 'an option given as undefined keeps its default')

  const none = Fastify()
  t.teardown(() => none.close())
  const error = await rejection(none.register(resilientHttp as never).ready())
  t.match(error, { code: 'FRH_INVALID_OPTIONS', option: 'clients' })
})
