import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidOptionsError } from './lib/errors'
import { HttpClient } from './lib/http-client'
import { resolvePluginOptions } from './lib/options'
import { installRequestContext } from './lib/request-context'
import type { PluginOptions } from './lib/types'

/** `fastify.httpClients`: the registered clients by name; asking for another name throws. */
export interface HttpClients {
  [name: string]: HttpClient
}

// Names that generic code probes objects for (promises, JSON, test matchers); they read as undefined.
const PROBED_NAMES = new Set(['then', 'toJSON', 'asymmetricMatch', '$$typeof', 'nodeType', 'inspect'])

/**
 * The clients are own properties, read at full speed; a name that is not one
 * falls through to a prototype that throws, naming the registered clients:
 * a typo is a loud error, not `undefined`.
 */
function clientsByName (clients: Record<string, HttpClient>): HttpClients {
  const names = Object.keys(clients).join(', ')
  const unknownName = new Proxy(Object.create(Object.prototype) as object, {
    get (target, key, receiver) {
      if (typeof key === 'string' && !(key in target) && !PROBED_NAMES.has(key)) {
        throw new Error(`fastify-resilient-http: no client named "${key}"; registered clients: ${names}`)
      }
      return Reflect.get(target, key, receiver)
    }
  })
  return Object.assign(Object.create(unknownName) as HttpClients, clients)
}

async function resilientHttpPlugin (fastify: FastifyInstance, options: PluginOptions): Promise<void> {
  if (fastify.hasDecorator('httpClients')) {
    throw new InvalidOptionsError('plugin', 'fastify-resilient-http is already registered in this scope; register it once with every client in `clients`')
  }
  const settings = resolvePluginOptions(options)
  const clients: Record<string, HttpClient> = {}
  for (const clientOptions of settings.clients) {
    clients[clientOptions.name] = new HttpClient(clientOptions, fastify.log, {}, `clients.${clientOptions.name}`)
  }
  const httpClients = clientsByName(clients)
  fastify.decorate('httpClients', { getter: () => httpClients })
  installRequestContext(fastify, settings)
  fastify.addHook('onClose', async function closeHttpClients () {
    await Promise.all(Object.values(clients).map((client) => client.close()))
  })
}

export const resilientHttp: FastifyPluginAsync<PluginOptions> = fp(resilientHttpPlugin, {
  fastify: '5.x',
  name: 'fastify-resilient-http'
})

export default resilientHttp
export { requestIdGenerator, isValidRequestId } from './lib/request-id'
export { currentRequestId } from './lib/request-context'
export { createHttpClient, HttpClient } from './lib/http-client'
export type { ClientStats, PoolStats } from './lib/http-client'
export { HttpResponse } from './lib/response'
export { CHANNELS } from './lib/events'
export type { RetryEvent, RetrySkippedEvent, CircuitEvent, RetrySkipReason } from './lib/events'
export type { CircuitState } from './lib/circuit-breaker'
export type { Logger } from './lib/logger'
// Named, not `export *`: the trailing `module.exports =` below hides star re-exports
// from Node's CommonJS named-export detection, so ESM `import { TimeoutError }` would fail.
export {
  HttpClientError, CircuitOpenError, OverloadedError, TimeoutError, UpstreamError, HttpStatusError,
  InvalidRequestError, ResponseTooLargeError, ClientClosedError, InvalidOptionsError
} from './lib/errors'
export type { CallDetails, TimeoutKind } from './lib/errors'
export type * from './lib/types'

// CommonJS: `require()` returns the plugin itself, with `.default`, `.resilientHttp`
// and every named export on it, as Fastify plugins do.
module.exports = Object.assign(resilientHttp, module.exports)
