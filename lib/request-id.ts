import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { InvalidOptionsError } from './errors'
import { isHeaderName } from './validate'

const VALID_REQUEST_ID = /^[\x21-\x7e]{1,128}$/

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
  return function generateRequestId (request: IncomingMessage): string {
    const inbound = request.headers[name]
    return isValidRequestId(inbound) ? inbound : randomUUID()
  }
}
