// The public type surface of fastify-resilient-http. The package is CommonJS
// whose module is the plugin itself, so its types use `export =` with a
// namespace, as Fastify's own plugins do: `import resilientHttp from`,
// `import { createHttpClient } from` and `require()` are all typed right.
import type { FastifyPluginAsync } from 'fastify'
import type * as api from '../dist/plugin'

declare module '@fastify/request-context' {
  interface RequestContextData {
    /** The id of the inbound request being served, kept by fastify-resilient-http. */
    requestId?: string
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The clients registered by fastify-resilient-http, by name. */
    httpClients: fastifyResilientHttp.HttpClients
  }
  interface FastifyContextConfig {
    /** The most time a request to this route may take, outbound calls included (ms). */
    deadlineMs?: number
  }
}

type ResilientHttpPlugin = FastifyPluginAsync<api.PluginOptions>

declare namespace fastifyResilientHttp {
  /**
   * The type of `fastify.httpClients`. Augment it to name your clients:
   *
   * ```ts
   * declare module 'fastify-resilient-http' {
   *   interface HttpClients { payments: HttpClient }
   * }
   * ```
   */
  export interface HttpClients {}

  export type HttpClient = api.HttpClient
  export const HttpClient: typeof api.HttpClient
  export type HttpResponse = api.HttpResponse
  export const HttpResponse: typeof api.HttpResponse
  export type HttpStream = api.HttpStream
  export const HttpStream: typeof api.HttpStream
  export type ServerSentEvent = api.ServerSentEvent
  export type StreamOptions = api.StreamOptions
  export type ResumeOptions = api.ResumeOptions
  export type StreamResumedEvent = api.StreamResumedEvent
  export type StreamIdleTimeoutEvent = api.StreamIdleTimeoutEvent

  export type PluginOptions = api.PluginOptions
  export type ClientOptions = api.ClientOptions
  export type CreateHttpClientOptions = api.CreateHttpClientOptions
  export type RetryOptions = api.RetryOptions
  export type RateLimitOptions = api.RateLimitOptions
  export type RedisLike = api.RedisLike
  export type RetryBudgetOptions = api.RetryBudgetOptions
  export type CircuitBreakerOptions = api.CircuitBreakerOptions
  export type HedgeOptions = api.HedgeOptions
  export type AdaptiveConcurrencyOptions = api.AdaptiveConcurrencyOptions
  export type OutlierDetectionOptions = api.OutlierDetectionOptions
  export type DeadlineOptions = api.DeadlineOptions
  export type DispatcherLike = api.DispatcherLike
  export type BaseUrlValue = api.BaseUrlValue
  export type DefaultHeaders = api.DefaultHeaders
  export type CallOptions = api.CallOptions
  export type RequestOptions = api.RequestOptions
  export type RequestBody = api.RequestBody
  export type ReplayableBody = api.ReplayableBody
  export type StreamBody = api.StreamBody
  export type FormFields = api.FormFields
  export type FormValue = api.FormValue
  export type AuthOptions = api.AuthOptions
  export type BearerAuth = api.BearerAuth
  export type BasicAuth = api.BasicAuth
  export type TokenAuth = api.TokenAuth
  export type Headers = api.Headers
  export type HeaderValue = api.HeaderValue
  export type Query = api.Query
  export type QueryValue = api.QueryValue
  export type Jitter = api.Jitter
  export type ClientStats = api.ClientStats
  export type PoolStats = api.PoolStats
  export type CircuitState = api.CircuitState
  export type TimeoutKind = api.TimeoutKind
  export type Logger = api.Logger
  export type RetryEvent = api.RetryEvent
  export type RetrySkippedEvent = api.RetrySkippedEvent
  export type RetrySkipReason = api.RetrySkipReason
  export type CircuitEvent = api.CircuitEvent
  export type CircuitCause = api.CircuitCause
  export type CircuitOpenedBy = api.CircuitOpenedBy
  export type HedgeEvent = api.HedgeEvent
  export type ShortCircuitedEvent = api.ShortCircuitedEvent
  export type OverloadedEvent = api.OverloadedEvent
  export type DeadlineExceededEvent = api.DeadlineExceededEvent
  export type ConcurrencyLimitEvent = api.ConcurrencyLimitEvent
  export type ReplicaEvent = api.ReplicaEvent
  export type RateLimitedEvent = api.RateLimitedEvent
  export type RateLimitPausedEvent = api.RateLimitPausedEvent
  export type PauseReason = api.PauseReason
  export type ReplicaStats = api.ReplicaStats

  export const createHttpClient: typeof api.createHttpClient
  export const requestIdGenerator: typeof api.requestIdGenerator
  export const isValidRequestId: typeof api.isValidRequestId
  export const currentRequestId: typeof api.currentRequestId
  export const currentDeadline: typeof api.currentDeadline
  export const resendCountSpanHook: typeof api.resendCountSpanHook
  export const CHANNELS: typeof api.CHANNELS

  export type HttpClientError = api.HttpClientError
  export const HttpClientError: typeof api.HttpClientError
  export type CircuitOpenError = api.CircuitOpenError
  export const CircuitOpenError: typeof api.CircuitOpenError
  export type OverloadedError = api.OverloadedError
  export const OverloadedError: typeof api.OverloadedError
  export type TimeoutError = api.TimeoutError
  export const TimeoutError: typeof api.TimeoutError
  export type UpstreamError = api.UpstreamError
  export const UpstreamError: typeof api.UpstreamError
  export type HttpStatusError = api.HttpStatusError
  export const HttpStatusError: typeof api.HttpStatusError
  export type InvalidRequestError = api.InvalidRequestError
  export const InvalidRequestError: typeof api.InvalidRequestError
  export type ResponseTooLargeError = api.ResponseTooLargeError
  export const ResponseTooLargeError: typeof api.ResponseTooLargeError
  export type ClientClosedError = api.ClientClosedError
  export const ClientClosedError: typeof api.ClientClosedError
  export type InvalidResponseError = api.InvalidResponseError
  export const InvalidResponseError: typeof api.InvalidResponseError
  export type InvalidOptionsError = api.InvalidOptionsError
  export const InvalidOptionsError: typeof api.InvalidOptionsError
  export type RateLimitedError = api.RateLimitedError
  export const RateLimitedError: typeof api.RateLimitedError
  export type AuthenticationError = api.AuthenticationError
  export const AuthenticationError: typeof api.AuthenticationError

  /** The plugin, also the default export. */
  export const resilientHttp: ResilientHttpPlugin
  /** The plugin under fastify-plugin's camel-cased name. */
  export const fastifyResilientHttp: ResilientHttpPlugin
  export { resilientHttp as default }
}

declare function fastifyResilientHttp (...params: Parameters<ResilientHttpPlugin>): ReturnType<ResilientHttpPlugin>
export = fastifyResilientHttp
