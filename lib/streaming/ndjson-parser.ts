import { type CallDetails, InvalidResponseError, ResponseTooLargeError } from '../errors'
import { LineSplitter } from './line-splitter'
import type { BodyParser } from './stream-iterator'

/** The lines of a body, as `lines()` yields them: a line over `limit` bytes fails with `ResponseTooLargeError`. */
export function lineSplitter (details: CallDetails, limit: number, anyBreak: boolean): LineSplitter {
  return new LineSplitter(limit, anyBreak, () => new ResponseTooLargeError(details, limit))
}

/**
 * Each non-empty line parsed as JSON, as `ndjson()` yields them. A line that
 * is not JSON fails with `InvalidResponseError` (its number on `line`).
 */
export class NdjsonParser implements BodyParser<unknown> {
  readonly #splitter: LineSplitter
  readonly #details: CallDetails

  constructor (details: CallDetails, limit: number) {
    this.#splitter = lineSplitter(details, limit, false)
    this.#details = details
  }

  feed (chunk: Buffer): void {
    this.#splitter.feed(chunk)
  }

  take (): unknown {
    for (;;) {
      const line = this.#splitter.take()
      if (line === undefined) return undefined
      if (line.length !== 0) return this.#parse(line)
    }
  }

  finish (): unknown {
    const line = this.#splitter.finish()
    return line === undefined || line.trim() === '' ? undefined : this.#parse(line)
  }

  #parse (line: string): unknown {
    try {
      return JSON.parse(line)
    } catch (error) {
      // A line of blanks is no record; anything else is a broken one.
      if (line.trim() === '') return this.take()
      throw new InvalidResponseError({ ...this.#details, cause: error }, this.#splitter.lineNumber)
    }
  }
}
