import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import { InvalidRequestError } from '../errors'
import { BodyReader } from './body-reader'
import { lineSplitter, NdjsonParser } from './ndjson-parser'
import { Reconnection } from './resume'
import { type ServerSentEvent, SseParser } from './sse-parser'
import type { StreamCore } from './stream-core'
import { StreamIterator } from './stream-iterator'

export type { ServerSentEvent } from './sse-parser'

/** Made by `HttpStream.open()` only: the constructor cannot be called from outside. */
const kOpen = Symbol('open')

/**
 * A streamed response, from `client.stream()`: open once a 2xx answer's
 * headers came (the commit point). Read it one way, once: `body`, `lines()`,
 * `ndjson()` or `events()`. It is bounded by `idleTimeout` (silence),
 * `maxDuration`, the caller's `signal` and close; leaving a `for await` loop
 * or `close()` ends it at once and frees its connection.
 */
export class HttpStream {
  /** Status of the response that opened the stream. */
  readonly statusCode: number
  /** Headers of the response that opened the stream. */
  readonly headers: IncomingHttpHeaders
  /** Attempts made to open it, hedges included. */
  readonly attempts: number
  readonly #core: StreamCore
  #body: Readable | null = null

  private constructor (key: symbol, core: StreamCore, statusCode: number, headers: IncomingHttpHeaders, attempts: number) {
    if (key !== kOpen) throw new TypeError('HttpStream is made by client.stream()')
    this.#core = core
    this.statusCode = statusCode
    this.headers = headers
    this.attempts = attempts
  }

  /** @internal */
  static open (core: StreamCore, statusCode: number, headers: IncomingHttpHeaders, attempts: number): HttpStream {
    return new HttpStream(kOpen, core, statusCode, headers, attempts)
  }

  /** The body's bytes as a `Readable` (destroying it closes the stream). */
  get body (): Readable {
    if (this.#body !== null) return this.#body
    const reader = new BodyReader(this.#reader('body'))
    this.#core.reader = reader
    this.#body = reader.readable
    return this.#body
  }

  /** The UTF-8 lines, without their `\n` or `\r\n`; a last line without one comes at the end. */
  lines (): AsyncIterableIterator<string> {
    const core = this.#reader('lines()')
    return this.#iterate(new StreamIterator(core, lineSplitter(core, core.settings.maxItemBytes, false)))
  }

  /** Each non-empty line parsed as JSON; a line that is not JSON fails with `InvalidResponseError`. */
  ndjson<T = unknown> (): AsyncIterableIterator<T> {
    const core = this.#reader('ndjson()')
    return this.#iterate(new StreamIterator(core, new NdjsonParser(core, core.settings.maxItemBytes) as NdjsonParser & { take(): T | undefined, finish(): T | undefined }))
  }

  /** Server-Sent Events by the WHATWG rules; with `resume`, reconnected after a failure with `Last-Event-ID`. */
  events (): AsyncIterableIterator<ServerSentEvent> {
    const core = this.#reader('events()')
    const parser = new SseParser(core, core.settings.maxItemBytes)
    if (core.settings.maxReconnects !== false) core.reconnector = new Reconnection(core, parser, core.settings.maxReconnects)
    return this.#iterate(new StreamIterator(core, parser))
  }

  /** Ends the stream now and frees its connection; reading ends as if the body had. */
  close (): void {
    this.#core.close()
  }

  #reader (name: string): StreamCore {
    const core = this.#core
    if (core.reader !== null) {
      throw new InvalidRequestError(core, `${name} cannot read the stream: it is already being read (a stream is read one way, once)`)
    }
    return core
  }

  #iterate<T> (iterator: StreamIterator<T>): StreamIterator<T> {
    this.#core.reader = iterator
    return iterator
  }
}
