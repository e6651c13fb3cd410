import Redis from 'ioredis'
import { expect, test } from 'tstyche'
import {
  createHttpClient, RateLimitedError, HttpClientError,
  type ClientOptions, type ClientStats, type RateLimitOptions, type RateLimitPausedEvent, type RateLimitedEvent
} from 'fastify-resilient-http'

test('rateLimit takes a local limit or an ioredis client for a fleet', () => {
  expect<ClientOptions>().type.toBeAssignableFrom({ baseUrl: 'http://x', rateLimit: { perSecond: 100 } })
  expect<ClientOptions>().type.toBeAssignableFrom({ baseUrl: 'http://x', rateLimit: false as const })
  const redis = new Redis({ lazyConnect: true })
  expect<RateLimitOptions>().type.toBeAssignableFrom({
    perSecond: 100, burst: 20, maxWaitMs: 500, redis, key: 'k', lease: 2, redisTimeoutMs: 50, onRedisError: 'refuse' as const, localPerSecond: 25
  })
  expect(createHttpClient).type.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: { perSecond: 10, redis } })
})

test('rateLimit refuses what it cannot use', () => {
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: {} })
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: { perSecond: '10' } })
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: { perSecond: 10, onRedisError: 'fail' } })
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: { perSecond: 10, redis: 'redis://localhost' } })
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: { perSecond: 10, redis: { get: async () => null } } })
  expect(createHttpClient).type.not.toBeCallableWith({ name: 'a', baseUrl: 'http://x', rateLimit: true })
})

test('RateLimitedError, the stats and the events', () => {
  const error: unknown = null
  if (error instanceof RateLimitedError) {
    expect(error.retryAfterMs).type.toBe<number>()
    expect(error).type.toBeAssignableTo<HttpClientError>()
  }
  expect<ClientStats['rateLimited']>().type.toBe<number>()
  expect<ClientStats['rateLimitWaits']>().type.toBe<number>()
  expect<RateLimitedEvent['retryAfterMs']>().type.toBe<number>()
  expect<RateLimitPausedEvent['reason']>().type.toBe<'retry-after' | 'ratelimit' | 'x-ratelimit' | 'fleet'>()
})
