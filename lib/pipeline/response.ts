import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import type { Attempt } from './attempt'
import { bodyBytes, bodyStream, readBody, takeBody } from './attempt-body'
import { brand, type CallDetails, describeCall, HttpClientError, InvalidResponseError } from '../errors'

const QUOTED_BODY_BYTES = 1024

/**
 * `raiseForStatus()` on a non-2xx response. Its own `statusCode` is 502: an
 * upstream's 401 must not tell the app's callers that they are unauthorized.
 */
export class HttpStatusError extends HttpClientError {
  /** The status the upstream answered with. */
  declare readonly upstreamStatusCode: number
  /** The first KiB of the response body, as text. Never part of the message. */
  declare readonly body: string
  /** The response itself (not enumerable, so loggers do not walk its stream). */
  declare readonly response: HttpResponse

  constructor (details: CallDetails, upstreamStatusCode: number, body: string, response: HttpResponse) {
    super('FRH_HTTP_STATUS', `${describeCall(details)} answered ${upstreamStatusCode}`, details, 502)
    this.upstreamStatusCode = upstreamStatusCode
    this.body = body
    Object.defineProperty(this, 'response', { value: response, enumerable: false })
  }
}
brand(HttpStatusError, 'HttpStatusError')

/** Only the client makes responses: `new HttpResponse()` from outside throws. */
const kMadeByClient = Symbol('made by the client')

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
  /** How many attempts the call made, hedges included (redirects and the resend after a 401 are not attempts). */
  readonly attempts: number
  /** Redirects followed (0 when none). */
  readonly redirects: number
  /**
   * The path the response came from, relative to the base path as the
   * caller writes it: the call's own path (without `query`), or after a
   * redirect the `Location`'s path with its query string.
   */
  readonly path: string
  readonly #attempt: Attempt
  readonly #call: CallDetails

  /** Made by the client (`HttpResponse.from()`), never by users. */
  private constructor (token: typeof kMadeByClient, attempt: Attempt, call: CallDetails & { attempts: number, redirects: number, finalPath: string }) {
    if (token !== kMadeByClient) throw new TypeError('HttpResponse cannot be constructed: calls of an HttpClient resolve with one')
    this.statusCode = attempt.statusCode
    this.headers = attempt.headers as IncomingHttpHeaders
    this.attempts = call.attempts
    this.redirects = call.redirects
    this.path = call.finalPath
    this.#attempt = attempt
    this.#call = call
  }

  /** @internal The client's answer to a call whose final attempt is `attempt`. */
  static from (attempt: Attempt, call: CallDetails & { attempts: number, redirects: number, finalPath: string }): HttpResponse {
    return new HttpResponse(kMadeByClient, attempt, call)
  }

  /** `statusCode` is 2xx. */
  get ok (): boolean {
    return this.statusCode >= 200 && this.statusCode < 300
  }

  /** The body as a stream, for streaming. Read it once, by one means. */
  get body (): Readable {
    return bodyStream(this.#attempt)
  }

  /**
   * The body parsed as JSON. A body that is not JSON rejects with
   * `InvalidResponseError` (the parser's error on `cause`; the body is never
   * quoted in the message).
   */
  json<T = unknown> (): Promise<T> {
    const attempt = this.#attempt
    // Small bodies usually arrive with their headers: parse at once, one promise.
    if (attempt.complete && takeBody(attempt)) {
      try {
        return Promise.resolve(JSON.parse(bodyBytes(attempt).toString('utf8')) as T)
      } catch (error) {
        return Promise.reject(this.#notJson(error))
      }
    }
    return this.#bytes().then((bytes) => {
      try {
        return JSON.parse(bytes.toString('utf8')) as T
      } catch (error) {
        throw this.#notJson(error)
      }
    })
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
    const quoted = bodyBytes(this.#attempt).subarray(0, QUOTED_BODY_BYTES).toString('utf8')
    throw new HttpStatusError({ clientName: call.clientName, method: call.method, path: call.path, attempts: this.attempts }, this.statusCode, quoted, this)
  }

  #notJson (error: unknown): InvalidResponseError {
    const call = this.#call
    return new InvalidResponseError({ clientName: call.clientName, method: call.method, path: call.path, attempts: this.attempts, cause: error })
  }

  #bytes (): Promise<Buffer> {
    const attempt = this.#attempt
    if (!takeBody(attempt) && !attempt.complete) return Promise.reject(new TypeError('the response body was already read'))
    return readBody(attempt)
  }
}

function toText (bytes: Buffer): string {
  return bytes.toString('utf8')
}

function toArrayBuffer (bytes: Buffer): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer
}
