import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import type { Attempt } from './attempt'
import { type CallDetails, HttpStatusError } from './errors'

const QUOTED_BODY_BYTES = 1024

/**
 * The answer to a call. Its body comes as undici hands over the chunks;
 * `json()`, `text()` and `arrayBuffer()` take them without a stream, and
 * `body` makes a `Readable` on first use. A non-2xx response has its body
 * read already (within `maxResponseBytes`), so `raiseForStatus()` can quote it.
 */
export class HttpResponse {
  /** Status of the final attempt. */
  readonly statusCode: number
  /** Headers of the final attempt. */
  readonly headers: IncomingHttpHeaders
  /** How many attempts the call made, hedges included. */
  readonly attempts: number
  readonly #attempt: Attempt
  readonly #call: CallDetails

  /** @internal Made by the client. */
  constructor (attempt: Attempt, call: CallDetails & { attempts: number }) {
    this.statusCode = attempt.statusCode
    this.headers = attempt.headers as IncomingHttpHeaders
    this.attempts = call.attempts
    this.#attempt = attempt
    this.#call = call
  }

  /** `statusCode` is 2xx. */
  get ok (): boolean {
    return this.statusCode >= 200 && this.statusCode < 300
  }

  /** The body as a stream, for streaming. Read it once, by one means. */
  get body (): Readable {
    return this.#attempt.stream()
  }

  /** The body parsed as JSON. */
  json<T = unknown> (): Promise<T> {
    const attempt = this.#attempt
    // Small bodies usually arrive with their headers: parse at once, one promise.
    if (attempt.complete && attempt.takeBody()) {
      try {
        return Promise.resolve(parseJson(attempt.bytes()) as T)
      } catch (error) {
        return Promise.reject(error)
      }
    }
    return this.#bytes().then(parseJson) as Promise<T>
  }

  /** The body as UTF-8 text. */
  text (): Promise<string> {
    return this.#bytes().then(toText)
  }

  /** The body as bytes. */
  arrayBuffer (): Promise<ArrayBuffer> {
    return this.#bytes().then(toArrayBuffer)
  }

  /** Returns the response when `ok`; throws `HttpStatusError` (502, the upstream's status on `upstreamStatusCode`) otherwise. */
  raiseForStatus (): this {
    if (this.ok) return this
    const call = this.#call
    const quoted = this.#attempt.bytes().subarray(0, QUOTED_BODY_BYTES).toString('utf8')
    throw new HttpStatusError({ clientName: call.clientName, method: call.method, path: call.path, attempts: this.attempts }, this.statusCode, quoted, this)
  }

  #bytes (): Promise<Buffer> {
    const attempt = this.#attempt
    if (!attempt.takeBody() && !attempt.complete) return Promise.reject(new TypeError('the response body was already read'))
    return attempt.readAll()
  }
}

function parseJson (bytes: Buffer): unknown {
  return JSON.parse(bytes.toString('utf8'))
}

function toText (bytes: Buffer): string {
  return bytes.toString('utf8')
}

function toArrayBuffer (bytes: Buffer): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer
}
