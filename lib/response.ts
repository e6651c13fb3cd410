import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import {
  type CallDetails, HttpClientError, HttpStatusError, ResponseTooLargeError, UpstreamError
} from './errors'
import { errorCode } from './retry-policy'

/** The undici body stream of a response. */
export type ResponseBody = Dispatcher.ResponseData['body']

/** What a response knows of the call that produced it, for its errors. */
export interface ResponseSource extends CallDetails {
  readonly maxResponseBytes: number | undefined
}

const QUOTED_BODY_BYTES = 1024

function noop (): void {}

/**
 * Reads a whole body, failing with `ResponseTooLargeError` past `limit`
 * bytes (checked against `content-length` first, then while reading).
 */
export async function readBody (body: ResponseBody, headers: IncomingHttpHeaders, limit: number | undefined, source: CallDetails): Promise<Buffer> {
  const max = limit ?? Infinity
  // A HEAD response announces the length of a body it does not carry.
  if (source.method !== 'HEAD' && Number(headers['content-length']) > max) {
    body.on('error', noop).destroy()
    throw new ResponseTooLargeError(source, max)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > max) {
      body.on('error', noop).destroy()
      throw new ResponseTooLargeError(source, max)
    }
    chunks.push(chunk)
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)
}

/** Turns a failure while reading a body into one of our errors. */
export function bodyError (error: unknown, source: ResponseSource): unknown {
  if (error instanceof HttpClientError) return error
  const code = errorCode(error)
  if (code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') return new ResponseTooLargeError(source, source.maxResponseBytes ?? 0)
  if (code !== undefined && (code.startsWith('UND_ERR_') || code.startsWith('E'))) {
    return new UpstreamError({ clientName: source.clientName, method: source.method, path: source.path, attempts: source.attempts, cause: error })
  }
  // A caller's abort reason, or a JSON syntax error: as it is.
  return error
}

/**
 * The answer to a call. A non-2xx response has its body read already (within
 * `maxResponseBytes`), so `raiseForStatus()` can quote it at once.
 */
export class HttpResponse {
  /** Status of the final attempt. */
  readonly statusCode: number
  /** Headers of the final attempt. */
  readonly headers: IncomingHttpHeaders
  /** How many attempts the call made. */
  readonly attempts: number
  /** The undici body stream, for streaming. Read it once, by one means. */
  readonly body: ResponseBody
  private readonly source: ResponseSource
  private readonly buffered: Buffer | undefined

  constructor (statusCode: number, headers: IncomingHttpHeaders, body: ResponseBody, attempts: number, source: ResponseSource, buffered?: Buffer) {
    this.statusCode = statusCode
    this.headers = headers
    this.body = body
    this.attempts = attempts
    this.source = source
    this.buffered = buffered
  }

  /** `statusCode` is 2xx. */
  get ok (): boolean {
    return this.statusCode >= 200 && this.statusCode < 300
  }

  /** The body parsed as JSON. */
  async json<T = unknown> (): Promise<T> {
    if (this.buffered !== undefined || this.source.maxResponseBytes !== undefined) {
      return JSON.parse((await this.bytes()).toString('utf8')) as T
    }
    try {
      return await this.body.json() as T
    } catch (error) {
      throw bodyError(error, this.source)
    }
  }

  /** The body as UTF-8 text. */
  async text (): Promise<string> {
    if (this.buffered !== undefined || this.source.maxResponseBytes !== undefined) {
      return (await this.bytes()).toString('utf8')
    }
    try {
      return await this.body.text()
    } catch (error) {
      throw bodyError(error, this.source)
    }
  }

  /** The body as bytes. */
  async arrayBuffer (): Promise<ArrayBuffer> {
    const bytes = await this.bytes()
    return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer
  }

  /** Returns the response when `ok`; throws `HttpStatusError` quoting the start of the body otherwise. */
  raiseForStatus (): this {
    if (this.ok) return this
    const quoted = this.buffered === undefined ? '' : this.buffered.subarray(0, QUOTED_BODY_BYTES).toString('utf8')
    throw new HttpStatusError({ clientName: this.source.clientName, method: this.source.method, path: this.source.path, attempts: this.attempts }, this.statusCode, quoted, this)
  }

  private async bytes (): Promise<Buffer> {
    if (this.buffered !== undefined) return this.buffered
    try {
      return await readBody(this.body, this.headers, this.source.maxResponseBytes, this.source)
    } catch (error) {
      throw bodyError(error, this.source)
    }
  }
}
