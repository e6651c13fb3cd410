import type { CallDetails } from '../errors'
import type { LineSplitter } from './line-splitter'
import { lineSplitter } from './ndjson-parser'
import type { BodyParser } from './stream-iterator'

/** One Server-Sent Event, as `events()` yields it. */
export interface ServerSentEvent {
  /** The event type: `'message'` when the event named none. */
  event: string
  /** The event's `data` lines, joined with `\n`. */
  data: string
  /** The last event id seen on the stream (this event's or an earlier one's); `undefined` before any. */
  id: string | undefined
  /** The reconnection time this event set, in ms; `undefined` when it set none. */
  retry: number | undefined
}

const DIGITS = /^\d+$/

/**
 * Server-Sent Events by the WHATWG rules (HTML, "Server-sent events",
 * 9.2.6): lines end at CRLF, LF or CR; a blank line dispatches; `data` lines
 * join with `\n`; `event` sets the type; `id` sets the last event id unless
 * it holds a NUL; `retry` sets the reconnection time when all digits; a line
 * starting with `:` is a comment; other fields are ignored. An event not
 * ended by a blank line when the body ends is dropped, as the rules say.
 */
export class SseParser implements BodyParser<ServerSentEvent> {
  /** The last event id of an event block that ended (a blank line), kept across reconnections: what `Last-Event-ID` sends. */
  lastEventId: string | undefined = undefined
  /** The last reconnection time the server set, kept across reconnections. */
  lastRetry: number | undefined = undefined
  #splitter: LineSplitter
  readonly #details: CallDetails
  readonly #limit: number
  /** The id of the block being read; it becomes `lastEventId` at the blank line that ends the block. */
  #id: string | undefined = undefined
  #data: string | undefined = undefined
  #type = ''
  #retry: number | undefined = undefined

  constructor (details: CallDetails, limit: number) {
    this.#details = details
    this.#limit = limit
    this.#splitter = lineSplitter(details, limit, true)
  }

  feed (chunk: Buffer): void {
    this.#splitter.feed(chunk)
  }

  take (): ServerSentEvent | undefined {
    const splitter = this.#splitter
    for (;;) {
      const line = splitter.take()
      if (line === undefined) return undefined
      if (line.length === 0) {
        const event = this.#dispatch()
        if (event !== undefined) return event
        continue
      }
      const colon = line.indexOf(':')
      if (colon === 0) continue
      const field = colon === -1 ? line : line.slice(0, colon)
      let value = ''
      if (colon !== -1) value = line.charCodeAt(colon + 1) === 32 ? line.slice(colon + 2) : line.slice(colon + 1)
      switch (field) {
        case 'data':
          this.#data = this.#data === undefined ? value : `${this.#data}\n${value}`
          break
        case 'event':
          this.#type = value
          break
        case 'id':
          if (!value.includes('\0')) this.#id = value
          break
        case 'retry':
          if (DIGITS.test(value)) this.lastRetry = this.#retry = Number(value)
          break
      }
    }
  }

  finish (): undefined {
    return undefined
  }

  /** A new connection: what was pending of an event is dropped; the last id and retry stay. */
  reset (): void {
    this.#splitter = lineSplitter(this.#details, this.#limit, true)
    this.#id = this.lastEventId
    this.#data = undefined
    this.#type = ''
    this.#retry = undefined
  }

  #dispatch (): ServerSentEvent | undefined {
    const data = this.#data
    const type = this.#type
    const retry = this.#retry
    this.lastEventId = this.#id
    this.#data = undefined
    this.#type = ''
    this.#retry = undefined
    if (data === undefined) return undefined
    return { event: type === '' ? 'message' : type, data, id: this.lastEventId, retry }
  }
}
