import { AsyncLocalStorage } from 'node:async_hooks'
import { asyncLocalStorage } from '@fastify/request-context'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { randomUUID } from 'node:crypto'
import type { HeaderList } from './headers'
import type { Logger } from './logger'
import { isValidRequestId } from './request-id'

/** What outbound calls made while serving one inbound request need of it. */
export interface InboundContext extends OutboundContext {
  readonly requestId: string
  readonly deadlineAt: number | undefined
  readonly deadlineHeader: string | undefined
  readonly log: Logger
}

/** The inbound request being served, if any. */
export function currentInboundContext (): InboundContext | undefined {
  return currentOutboundContext() as InboundContext | undefined
}

/** What outbound calls made while serving one inbound request send along. */
export interface OutboundContext {
  /** The request id header and the propagated headers, as a header list. */
  readonly withRequestId: HeaderList
  /** Only the propagated headers, for clients with `propagateRequestId: false`. */
  readonly propagatedOnly: HeaderList
}

type Store = Record<PropertyKey, unknown>

const kOutbound = Symbol('fastify-resilient-http.outbound')
const kContext = Symbol('fastify-resilient-http.context')
const EMPTY: HeaderList = []

const storage = asyncLocalStorage as unknown as { getStore(): Store | undefined, run<R>(store: Store, fn: () => R): R }

// A @fastify/request-context registered after this plugin opens a fresh,
// empty store in its own onRequest hook: until preHandler fills it, calls made
// from the app's onRequest, preParsing and preValidation hooks find the
// request here instead. Only apps in that situation use it: every enabled
// AsyncLocalStorage adds work to each async operation of the process.
const ownStorage = new AsyncLocalStorage<Store>()
let ownStorageInUse = false

/**
 * The outbound headers of the inbound request being served, if any: one
 * AsyncLocalStorage lookup and a property read, on every call.
 */
export function currentOutboundContext (): OutboundContext | undefined {
  const context = storage.getStore()?.[kOutbound]
  if (context !== undefined || !ownStorageInUse) return context as OutboundContext | undefined
  return ownStorage.getStore()?.[kOutbound] as OutboundContext | undefined
}

/** The id of the inbound request being served, or `undefined` outside a request. */
export function currentRequestId (): string | undefined {
  const id = storage.getStore()?.requestId
  if (id !== undefined || !ownStorageInUse) return id as string | undefined
  return ownStorage.getStore()?.requestId as string | undefined
}

function fillStore (store: Store, request: FastifyRequest): void {
  store.requestId = request.id
  store[kOutbound] = (request as unknown as Record<symbol, OutboundContext>)[kContext]
}

export interface RequestIdSettings {
  readonly requestIdHeader: string
  readonly echoRequestId: boolean
  readonly propagateHeaders: readonly string[]
}

/**
 * Keeps each inbound request's id, and the headers to propagate, in
 * @fastify/request-context's store, where a client call anywhere in the
 * handling of the request finds them.
 *
 * The store is the one @fastify/request-context keeps; when that plugin is
 * not registered (yet), these hooks open it themselves, the same way, so the
 * app may register it before this plugin, after it, or not at all.
 */
export function installRequestContext (fastify: FastifyInstance, settings: RequestIdSettings): void {
  const { requestIdHeader, echoRequestId, propagateHeaders } = settings
  // Known once the app is ready: was @fastify/request-context registered after this plugin?
  const registeredBefore = fastify.hasDecorator('requestContext')
  let registeredAfter = false
  fastify.addHook('onReady', function resilientHttpCheckRequestContext (done) {
    registeredAfter = !registeredBefore && fastify.hasDecorator('requestContext')
    if (registeredAfter) ownStorageInUse = true
    done()
  })

  fastify.addHook('onRequest', function resilientHttpRequestId (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    if (!isValidRequestId(request.id)) {
      // Fastify took the id from a header without checking it: replace it everywhere.
      request.id = randomUUID()
      request.log = request.log.child({ reqId: request.id })
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
    const context: InboundContext = { requestId: id, withRequestId: [requestIdHeader, id, ...propagated], propagatedOnly: propagated, deadlineAt: undefined, deadlineHeader: undefined, log: request.log }
    ;(request as unknown as Record<symbol, OutboundContext>)[kContext] = context

    const store = storage.getStore()
    if (store !== undefined) {
      fillStore(store, request)
      done()
      return
    }
    const own: Store = {}
    fillStore(own, request)
    // Fastify 5 keeps this context through body parsing (its content-type
    // parser runs in an AsyncResource), so the handler runs inside it too.
    enterStore(own, done)
  })

  function enterStore (own: Store, done: HookHandlerDoneFunction): void {
    if (registeredAfter) {
      ownStorage.run(own, () => storage.run(own, done))
    } else {
      storage.run(own, done)
    }
  }

  // A @fastify/request-context registered after this plugin opens a fresh
  // store after ours: fill that one too before the handler runs.
  fastify.addHook('preHandler', function resilientHttpFillContext (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
    if (registeredAfter) {
      const store = storage.getStore()
      if (store !== undefined && store[kOutbound] === undefined) fillStore(store, request)
    }
    done()
  })
}
