import { InvalidRequestError } from '../errors'
import type { HttpClient } from './http-client'

/** `fastify.httpClients`: the registered clients by name; asking for another name throws. */
export interface HttpClients {
  [name: string]: HttpClient
}

// Names that generic code probes objects for (promises, JSON, test matchers); they read as undefined.
const PROBED_NAMES = new Set(['then', 'toJSON', 'asymmetricMatch', '$$typeof', 'nodeType', 'inspect'])

/**
 * The clients are own properties, read at full speed; a name that is not one
 * falls through to a prototype that throws `InvalidRequestError`, naming the
 * registered clients: a typo is a loud error, not `undefined`.
 */
export function clientsByName (clients: Record<string, HttpClient>): HttpClients {
  const names = Object.keys(clients).join(', ')
  const unknownName = new Proxy(Object.create(Object.prototype) as object, {
    get (target, key, receiver) {
      if (typeof key === 'string' && !(key in target) && !PROBED_NAMES.has(key)) {
        throw new InvalidRequestError({ clientName: key }, `no client named "${key}" is registered; registered clients: ${names}`)
      }
      return Reflect.get(target, key, receiver)
    }
  })
  return Object.assign(Object.create(unknownName) as HttpClients, clients)
}
