import { AsyncLocalStorage } from 'node:async_hooks'
import { asyncLocalStorage } from '@fastify/request-context'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { checkRouteDeadline, type DeadlineSettings, parseDeadlineHeader, requestDeadlineAt } from './deadline'
import { InvalidOptionsError } from '../errors'
import { type HeaderList, UPGRADE_REFUSED } from '../headers'
import type { Logger } from '../logger'
import { isValidRequestId, warnOnCountedRequestIds } from './request-id'
import { propagatorFields } from '../telemetry/otel'

/** What the outbound calls made while serving one inbound request take from it. */
export interface InboundContext {
  /** The request's id (already checked: 1 to 128 visible ASCII characters). */
  readonly requestId: string
  /** The request id header and the propagated headers, as a header list. */
  readonly withRequestId: HeaderList
  /** Only the propagated headers, for clients with `propagateRequestId: false`. */
  readonly propagatedOnly: HeaderList
  /** performance.now() ms at which the request's deadline passes, if it has one. */
  readonly deadlineAt: number | undefined
  /** Lower-case header to forward the ms left on, when the `deadline` option forwards. */
  readonly deadlineHeader: string | undefined
  /** The request's own logger (`request.log`, as it is when read). */
  readonly log: Logger
}

/** What {@link installRequestContext} needs from the resolved plugin options. */
export interface RequestContextSettings {
  readonly requestIdHeader: string
  readonly echoRequestId: boolean
  readonly propagateHeaders: readonly string[]
  /** Absent or `false`: inbound deadline headers are neither read nor forwarded. */
  readonly deadline?: DeadlineSettings | false | undefined
}

type Store = Record<PropertyKey, unknown>

const kInbound = Symbol('fastify-resilient-http.inbound')
const EMPTY: HeaderList = []

const storage = asyncLocalStorage as unknown as { getStore(): Store | undefined, run<R>(store: Store, fn: () => R): R }

// A @fastify/request-context registered after this plugin opens a fresh,
// empty store in its own onRequest hook: until preHandler fills it, calls made
// from the app's onRequest, preParsing and preValidation hooks find the
// request here instead. Only apps in that situation use it: every enabled
// AsyncLocalStorage adds work to each async operation of the process.
const ownStorage = new AsyncLocalStorage<Store>()
let ownStorageInUse = false

/** One request's context; `log` is read from the request so that a logger the app swaps in later is used. */
class RequestInbound implements InboundContext {
  readonly requestId: string
  readonly withRequestId: HeaderList
  readonly propagatedOnly: HeaderList
  readonly deadlineAt: number | undefined
  readonly deadlineHeader: string | undefined
  private readonly request: FastifyRequest

  constructor (request: FastifyRequest, withRequestId: HeaderList, propagatedOnly: HeaderList, deadlineAt: number | undefined, deadlineHeader: string | undefined) {
    this.requestId = request.id
    this.withRequestId = withRequestId
    this.propagatedOnly = propagatedOnly
    this.deadlineAt = deadlineAt
    this.deadlineHeader = deadlineHeader
    this.request = request
  }

  get log (): Logger {
    return this.request.log
  }
}

/**
 * The context of the inbound request being served, if any: one
 * AsyncLocalStorage lookup and a property read, on every outbound call.
 */
export function currentInboundContext (): InboundContext | undefined {
  const context = storage.getStore()?.[kInbound]
  if (context !== undefined || !ownStorageInUse) return context as InboundContext | undefined
  return ownStorage.getStore()?.[kInbound] as InboundContext | undefined
}

/** The id of the inbound request being served, or `undefined` outside a request. */
export function currentRequestId (): string | undefined {
  return currentInboundContext()?.requestId
}

/**
 * The ms left before the deadline of the inbound request being served (0 once
 * it has passed, never negative; not rounded), or `undefined` outside a
 * request or when the request has no deadline.
 */
export function currentDeadline (): number | undefined {
  const deadlineAt = currentInboundContext()?.deadlineAt
  if (deadlineAt === undefined) return undefined
  const left = deadlineAt - performance.now()
  return left > 0 ? left : 0
}

/**
 * Refuses a `propagateHeaders` entry that names the request id header (in any
 * case): the id is sent by `propagateRequestId`, after the check that keeps
 * an invalid inbound id from going anywhere.
 */
export function checkPropagateHeaders (requestIdHeader: string, propagateHeaders: readonly string[]): void {
  const idHeader = requestIdHeader.toLowerCase()
  for (const [i, name] of propagateHeaders.entries()) {
    if (name.toLowerCase() === 'upgrade') throw new InvalidOptionsError(`propagateHeaders.${i}`, `must not name "${name}": forwarding it ${UPGRADE_REFUSED}`)
    if (name.toLowerCase() === idHeader) {
      throw new InvalidOptionsError(`propagateHeaders.${i}`,
        `must not name the request id header "${requestIdHeader}": the request id is forwarded by propagateRequestId, once checked`)
    }
  }
}

function fillStore (store: Store, context: InboundContext): void {
  store.requestId = context.requestId
  store[kInbound] = context
}

/**
 * Keeps each inbound request's context (id, headers to propagate, deadline,
 * logger) in @fastify/request-context's store, where a client call anywhere
 * in the handling of the request finds it.
 *
 * Every request gets a store of its own. The one @fastify/request-context
 * opened for this very request (registered before this plugin) is filled;
 * any other store found (that of the request inside whose handler
 * `app.inject()` runs) is left alone and a fresh one is opened, so the app
 * may register @fastify/request-context before this plugin, after it, or not
 * at all.
 *
 * A route's `config.deadlineMs` is checked when the route is registered (an
 * `onRoute` hook): a bad value fails that registration. Routes registered
 * before this plugin are not seen by the hook; a bad value there is ignored.
 */
export function installRequestContext (fastify: FastifyInstance, settings: RequestContextSettings): void {
  const { requestIdHeader, echoRequestId } = settings
  checkPropagateHeaders(requestIdHeader, settings.propagateHeaders)
  // Headers an active OpenTelemetry propagator injects are its own: copying them too
  // would send two traceparents. Known once the app is ready (the SDK may start later).
  let propagateHeaders = settings.propagateHeaders
  const deadline = settings.deadline ?? false
  const deadlineHeader = deadline === false ? undefined : deadline.header.toLowerCase()
  const forwardedDeadlineHeader = deadline !== false && deadline.forward ? deadlineHeader : undefined
  const serverLog = fastify.log
  // Fastify always fills it in ('reqId' by default); its types leave it optional.
  const logLabel = fastify.initialConfig.requestIdLogLabel as string

  // Known at registration: did @fastify/request-context open this request's store before our hook?
  const registeredBefore = fastify.hasDecorator('requestContext')
  // Known once the app is ready: was it registered after this plugin?
  let registeredAfter = false
  let fillBeforeHandler = registeredBefore
  fastify.addHook('onReady', function resilientHttpCheckRequestContext (done) {
    registeredAfter = !registeredBefore && fastify.hasDecorator('requestContext')
    if (registeredAfter) ownStorageInUse = true
    fillBeforeHandler = registeredBefore || registeredAfter
    warnOnCountedRequestIds(fastify)
    const injected = propagatorFields()
    if (injected.length > 0) propagateHeaders = settings.propagateHeaders.filter((name) => !injected.includes(name))
    done()
  })

  fastify.addHook('onRoute', function resilientHttpCheckRouteDeadline (route) {
    checkRouteDeadline(route)
  })

  fastify.decorateRequest(kInbound, null)

  fastify.addHook('onRequest', function resilientHttpRequestContext (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    const arrivedAt = performance.now()
    if (!isValidRequestId(request.id)) {
      // Fastify took the id from a header without checking it: replace it everywhere.
      request.id = randomUUID()
      rebindRequestLogger(request, reply, serverLog, logLabel)
    }
    const id: string = request.id
    if (echoRequestId) reply.header(requestIdHeader, id)
    let propagated = EMPTY
    for (const name of propagateHeaders) {
      const value = request.headers[name]
      if (typeof value === 'string') {
        if (propagated === EMPTY) propagated = []
        propagated.push(name, value)
      }
    }
    const headerMs = deadlineHeader === undefined ? undefined : parseDeadlineHeader(request.headers[deadlineHeader])
    const deadlineAt = requestDeadlineAt(arrivedAt, headerMs, request.routeOptions.config?.deadlineMs)
    const context = new RequestInbound(request, [requestIdHeader, id, ...propagated], propagated, deadlineAt, forwardedDeadlineHeader)
    ;(request as unknown as Record<symbol, InboundContext>)[kInbound] = context

    const store = storage.getStore()
    // Only a store @fastify/request-context opened for this request, before
    // this hook, is still empty of ours; a filled one is another request's.
    if (store !== undefined && registeredBefore && store[kInbound] === undefined) {
      fillStore(store, context)
      done()
      return
    }
    const own: Store = {}
    fillStore(own, context)
    // Fastify 5 keeps this context through body parsing (its content-type
    // parser runs in an AsyncResource), so the handler runs inside it too.
    if (registeredAfter) {
      ownStorage.run(own, () => storage.run(own, done))
    } else {
      storage.run(own, done)
    }
  })

  // A @fastify/request-context registered after this plugin (or told to open
  // its store in a later hook) opens a fresh store after ours: fill that one
  // too before the handler runs.
  fastify.addHook('preHandler', function resilientHttpFillContext (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
    if (fillBeforeHandler) {
      const store = storage.getStore()
      if (store !== undefined && store[kInbound] === undefined) {
        fillStore(store, (request as unknown as Record<symbol, InboundContext>)[kInbound])
      }
    }
    done()
  })
}

/**
 * Gives the request (and its reply) a logger bound to the new id, made the way
 * Fastify makes the request's logger: a child of the server's logger through
 * the app's child logger factory, at the route's log level. A child of the old
 * request logger would not do: pino appends bindings, so every line would
 * still carry the refused inbound id, then the new one.
 */
function rebindRequestLogger (request: FastifyRequest, reply: FastifyReply, serverLog: FastifyInstance['log'], logLabel: string): void {
  const server = request.server
  const level = request.routeOptions.logLevel
  const log = server.childLoggerFactory(serverLog, { [logLabel]: request.id }, level !== undefined && level !== '' ? { level } : {}, request.raw)
  request.log = log
  reply.log = log
}
