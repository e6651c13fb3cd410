import type { FastifyInstance } from 'fastify'
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { InvalidOptionsError } from '../errors'
import { isHeaderName } from '../validate'

const VALID_REQUEST_ID = /^[\x21-\x7e]{1,128}$/

// Symbol.for: a generator made by another copy of this package is recognised too.
const kRequestIdGenerator = Symbol.for('fastify-resilient-http.request-id-generator')

/**
 * An inbound id is used only when it is 1 to 128 visible ASCII characters
 * (`!` to `~`): nothing that could inject a header or flood a log line.
 */
export function isValidRequestId (value: unknown): value is string {
  return typeof value === 'string' && VALID_REQUEST_ID.test(value)
}

/**
 * A Fastify `genReqId` that takes the inbound `header` when it is a valid id
 * and a fresh version 4 UUID otherwise, so the id in the app's logs, on the
 * reply and upstream is one and the same:
 * `Fastify({ genReqId: requestIdGenerator() })`.
 */
export function requestIdGenerator (header = 'x-request-id'): (request: IncomingMessage) => string {
  if (typeof header !== 'string' || !isHeaderName(header)) {
    throw new InvalidOptionsError('header', `requestIdGenerator() needs a header name, got ${JSON.stringify(header)}`)
  }
  const name = header.toLowerCase()
  function generateRequestId (request: IncomingMessage): string {
    const inbound = request.headers[name]
    return isValidRequestId(inbound) ? inbound : randomUUID()
  }
  Object.defineProperty(generateRequestId, kRequestIdGenerator, { value: true })
  return generateRequestId
}

/** Whether `genReqId` was made by {@link requestIdGenerator} (by any copy of this package). */
export function isRequestIdGenerator (genReqId: unknown): boolean {
  return typeof genReqId === 'function' && (genReqId as unknown as Record<symbol, unknown>)[kRequestIdGenerator] === true
}

/**
 * Warns once, through the app's logger, when the app neither takes its ids
 * from {@link requestIdGenerator} nor reads them from a header with Fastify's
 * `requestIdHeader`: Fastify's own ids (`req-1`, `req-2`, ...) restart with
 * every process, so two replicas of a service send the same ids upstream.
 */
export function warnOnCountedRequestIds (fastify: FastifyInstance): void {
  // `genReqId` is a getter Fastify's types leave out; without requestIdHeader it is the app's function itself.
  if (isRequestIdGenerator((fastify as unknown as { genReqId?: unknown }).genReqId)) return
  const header: unknown = fastify.initialConfig.requestIdHeader
  if (typeof header === 'string' && header !== '') return
  fastify.log.warn('fastify-resilient-http: request ids are Fastify\'s counters (req-1, req-2, ...), which repeat across processes and replicas; ' +
    'use Fastify({ genReqId: requestIdGenerator() }) to take valid inbound ids and generate UUIDs otherwise')
}
