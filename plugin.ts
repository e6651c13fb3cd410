import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidOptionsError } from './lib/errors'
import { HttpClient } from './lib/api/http-client'
import { resolvePluginOptions } from './lib/options/resolve'
import { clientsByName } from './lib/api/registry'
import { checkPropagateHeaders, installRequestContext } from './lib/inbound/request-context'
import type { PluginOptions } from './lib/types'

async function resilientHttpPlugin (fastify: FastifyInstance, options: PluginOptions): Promise<void> {
  if (fastify.hasDecorator('httpClients')) {
    throw new InvalidOptionsError('plugin', 'fastify-resilient-http is already registered in this scope; register it once with every client in `clients`')
  }
  const settings = resolvePluginOptions(options)
  // Before any pool exists: a refusal here must leave nothing to close.
  checkPropagateHeaders(settings.requestIdHeader, settings.propagateHeaders)
  const clients: Record<string, HttpClient> = {}
  for (const clientOptions of settings.clients) {
    clients[clientOptions.name] = HttpClient.create(clientOptions, fastify.log, {}, `clients.${clientOptions.name}`)
  }
  const httpClients = clientsByName(clients)
  fastify.decorate('httpClients', { getter: () => httpClients })
  installRequestContext(fastify, settings)
  // Shutdown is bounded: from the moment close begins no call waits to retry or
  // hedges; once Fastify has let the requests in flight finish, the clients close.
  fastify.addHook('preClose', function drainHttpClients (done) {
    for (const client of Object.values(clients)) client.drain()
    done()
  })
  fastify.addHook('onClose', async function closeHttpClients () {
    await Promise.all(Object.values(clients).map((client) => client.close()))
  })
}

export const resilientHttp: FastifyPluginAsync<PluginOptions> = fp(resilientHttpPlugin, {
  fastify: '5.x',
  name: 'fastify-resilient-http'
})

export default resilientHttp
export type { HttpClients } from './lib/api/registry'
export { requestIdGenerator, isValidRequestId } from './lib/inbound/request-id'
export { currentDeadline, currentRequestId } from './lib/inbound/request-context'
export { createHttpClient, HttpClient } from './lib/api/http-client'
export type { ClientStats, PoolStats } from './lib/api/http-client'
export type { ReplicaStats } from './lib/policies/replicas'
export { HttpResponse, HttpStatusError } from './lib/pipeline/response'
export { HttpStream } from './lib/streaming/http-stream'
export type { ServerSentEvent } from './lib/streaming/http-stream'
export { CHANNELS } from './lib/telemetry/events'
export { resendCountSpanHook } from './lib/telemetry/otel'
export type {
  RetryEvent, RetrySkippedEvent, CircuitEvent, RetrySkipReason, HedgeEvent, ShortCircuitedEvent,
  OverloadedEvent, DeadlineExceededEvent, ConcurrencyLimitEvent, ReplicaEvent, CircuitCause,
  StreamResumedEvent, StreamIdleTimeoutEvent,
  RateLimitedEvent, RateLimitPausedEvent
} from './lib/telemetry/events'
export type { PauseReason } from './lib/policies/rate-limit'
export type { CircuitState } from './lib/policies/circuit-breaker'
export type { Logger } from './lib/logger'
// Named, not `export *`: the trailing `module.exports =` below hides star re-exports
// from Node's CommonJS named-export detection, so ESM `import { TimeoutError }` would fail.
export {
  HttpClientError, CircuitOpenError, OverloadedError, TimeoutError, UpstreamError,
  InvalidRequestError, ResponseTooLargeError, ClientClosedError, InvalidOptionsError, InvalidResponseError, RateLimitedError,
  AuthenticationError
} from './lib/errors'
export type { CallDetails, CircuitOpenedBy, TimeoutKind } from './lib/errors'
export type * from './lib/types'

// CommonJS: `require()` returns the plugin itself, with `.default`, `.resilientHttp`
// and every named export on it, as Fastify plugins do.
module.exports = Object.assign(resilientHttp, module.exports)
