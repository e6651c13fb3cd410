import { Readable } from 'node:stream'
import type { AsyncResource } from 'node:async_hooks'
import { abortReason, type CallDetails, HttpClientError, UpstreamError } from '../errors'
import { Cut, type CutValue, type DispatchController, Phase, type PhaseValue } from './attempt-state'

/**
 * An attempt's response body: the attempt is its own buffer (its first
 * chunk, then the rest), and hands it out whole (`readBody`, `bodyBytes`)
 * or as a `Readable` made on first use (`bodyStream`), with backpressure
 * through undici's controller. Plain functions taking the attempt: nothing
 * is allocated for a body beyond its chunks (and the promise or stream a
 * reader asks for).
 */

/** A response body nobody reads yet is paused past this many bytes, as a stream would be. */
const UNREAD_HIGH_WATER = 64 * 1024

type Settlers = [(value: Buffer) => void, (error: unknown) => void]
let settlersBeingMade: Settlers | null = null
function captureSettlers (resolve: (value: Buffer) => void, reject: (error: unknown) => void): void {
  settlersBeingMade = [resolve, reject]
}

/** What the body needs of its attempt: the attempt's own fields, internal to it and this module. */
export interface BodyBuffer {
  readonly owner: CallDetails & { readonly clientName: string, readonly scope: AsyncResource }
  readonly number: number
  readonly phase: PhaseValue
  readonly cut: CutValue
  readonly error: unknown
  /** Bytes received so far. */
  size: number
  controller: DispatchController | null
  /** The body buffered: its first chunk, then the rest (`null` until there are two). */
  first: Buffer | null
  rest: Buffer[] | null
  /** A `readBody()` waiting for the end. */
  reader: Settlers | null
  /** The body as a stream, once asked for: chunks go there instead. */
  stream: Readable | null
  /** Taken by a reader: by `json()`, `text()`, `arrayBuffer()` or as a stream. */
  read: boolean
  /** Paused because nobody reads it yet. */
  paused: boolean
  cancel(cut: CutValue, reason: unknown): void
}

/** Keeps a chunk of the body, or pushes it to the stream reading it. */
export function bufferChunk (attempt: BodyBuffer, controller: DispatchController, chunk: Buffer): void {
  if (attempt.stream !== null) {
    // The reader's 'data' listeners run as the chunk is pushed: in the call's context.
    if (!(attempt.owner.scope.runInAsyncScope(attempt.stream.push, attempt.stream, chunk) as boolean)) controller.pause()
    return
  }
  if (attempt.first === null) attempt.first = chunk
  else if (attempt.rest === null) attempt.rest = [chunk]
  else attempt.rest.push(chunk)
  if (attempt.phase === Phase.Streaming && attempt.reader === null && !attempt.paused && attempt.size > UNREAD_HIGH_WATER) {
    attempt.paused = true
    controller.pause()
  }
}

/** The body is complete: its stream ends, or its reader has it. */
export function endBody (attempt: BodyBuffer): void {
  if (attempt.stream !== null) attempt.stream.push(null)
  if (attempt.reader !== null) {
    const [resolve] = attempt.reader
    attempt.reader = null
    resolve(bodyBytes(attempt))
  }
}

/** The body failed with `error` (bodyError's): its stream and its reader see it. */
export function failBody (attempt: BodyBuffer, error: unknown): void {
  if (attempt.stream !== null) attempt.stream.destroy(error as Error)
  if (attempt.reader !== null) {
    const [, reject] = attempt.reader
    attempt.reader = null
    reject(error)
  }
}

/** The whole body received so far (all of it once the attempt is done). */
export function bodyBytes (attempt: BodyBuffer): Buffer {
  const first = attempt.first
  if (first === null) return EMPTY
  if (attempt.rest === null) return first
  const all = Buffer.concat([first, ...attempt.rest], attempt.size)
  attempt.first = all
  attempt.rest = null
  return all
}

/** The whole body, once it has arrived. */
export function readBody (attempt: BodyBuffer): Promise<Buffer> {
  if (attempt.stream !== null) return Promise.reject(new TypeError('the response body is already being read as a stream'))
  if (attempt.phase === Phase.Done) {
    if (attempt.error !== undefined) return Promise.reject(bodyError(attempt))
    return Promise.resolve(bodyBytes(attempt))
  }
  const promise = new Promise<Buffer>(captureSettlers)
  attempt.reader = settlersBeingMade
  settlersBeingMade = null
  resumeBody(attempt)
  return promise
}

/** The body as a `Readable`, made on first use, with backpressure through the controller. */
export function bodyStream (attempt: BodyBuffer): Readable {
  if (attempt.stream !== null) return attempt.stream
  const stream = new Readable({ read: () => { resumeBody(attempt) }, destroy: (error, callback) => { abandon(attempt, error, callback) } })
  attempt.stream = stream
  attempt.read = true
  if (attempt.first !== null) stream.push(bodyBytes(attempt))
  attempt.first = null
  if (attempt.phase === Phase.Done) {
    if (attempt.error !== undefined) stream.destroy(bodyError(attempt) as Error)
    else stream.push(null)
  }
  return stream
}

/** Marks the body as read by one of `json()`, `text()`, `arrayBuffer()`; `false` if it was already. */
export function takeBody (attempt: BodyBuffer): boolean {
  if (attempt.read) return false
  attempt.read = true
  return true
}

/** Stops undici reading the body until `resumeBody()`. */
export function pauseBody (attempt: BodyBuffer): void {
  attempt.controller?.pause()
}

/** Lets undici read the body again; never from inside `onResponseData`. */
export function resumeBody (attempt: BodyBuffer): void {
  if (attempt.controller === null || attempt.phase === Phase.Done) return
  attempt.paused = false
  attempt.controller.resume()
}

/** The error a reader of the body sees: ours as they are, a caller's reason as given, undici's wrapped. */
export function bodyError (attempt: BodyBuffer): unknown {
  const error = attempt.error
  if (error instanceof HttpClientError || attempt.cut === Cut.Caller) return error
  const owner = attempt.owner
  return new UpstreamError({ clientName: owner.clientName, method: owner.method, path: owner.path, attempts: attempt.number, cause: error })
}

/**
 * The stream is destroyed: by its reader (`destroy()`, a `break` out of
 * `for await`, a pipeline that failed downstream) or by us as the attempt
 * failed. A body still coming is not wanted any more: its attempt is cut,
 * and its connection is free at once.
 */
function abandon (attempt: BodyBuffer, error: Error | null, callback: (error: Error | null) => void): void {
  if (attempt.phase !== Phase.Done) attempt.cancel(Cut.Abandoned, abandonedReason())
  callback(error)
}

const EMPTY = Buffer.alloc(0)

/** Why an abandoned body's attempt is aborted. */
function abandonedReason (): Error {
  return abortReason('the response body was destroyed before its end')
}
