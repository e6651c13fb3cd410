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
const COLON = 58
const SPACE = 32
const D = 100
const E = 101
const I = 105
const R = 114

/**
 * The value of the line `text[start, end)` when its field is `name` (one
 * space after the colon dropped), `undefined` when the field is another.
 * `name`'s first letter is already known to match.
 */
function fieldValue (text: string, start: number, end: number, name: string): string | undefined {
  const after = start + name.length
  if (after > end) return undefined
  for (let i = 1; i < name.length; i++) if (text.charCodeAt(start + i) !== name.charCodeAt(i)) return undefined
  if (after === end) return ''
  if (text.charCodeAt(after) !== COLON) return undefined
  return text.slice(after + 1 < end && text.charCodeAt(after + 1) === SPACE ? after + 2 : after + 1, end)
}

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
    while (splitter.advance()) {
      const text = splitter.text
      const start = splitter.lineStart
      const end = splitter.lineEnd
      if (start === end) {
        const event = this.#dispatch()
        if (event !== undefined) return event
        continue
      }
      // Dispatch on the first letter: the four fields differ there, and a
      // comment (`:`) or an unknown field costs one comparison.
      switch (text.charCodeAt(start)) {
        case D: {
          const value = fieldValue(text, start, end, 'data')
          if (value !== undefined) this.#data = this.#data === undefined ? value : `${this.#data}\n${value}`
          break
        }
        case E: {
          const value = fieldValue(text, start, end, 'event')
          if (value !== undefined) this.#type = value
          break
        }
        case I: {
          const value = fieldValue(text, start, end, 'id')
          if (value !== undefined && !value.includes('\0')) this.#id = value
          break
        }
        case R: {
          const value = fieldValue(text, start, end, 'retry')
          if (value !== undefined && DIGITS.test(value)) this.lastRetry = this.#retry = Number(value)
          break
        }
      }
    }
    return undefined
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
