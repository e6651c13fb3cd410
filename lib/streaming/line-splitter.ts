const LF = 10
const CR = 13

/**
 * Splits a body's bytes into UTF-8 lines, lazily: `feed()` takes a chunk
 * once the lines of the one before are taken, decodes the chunk's complete
 * lines as one string, and `take()` slices one line off it at a time. A line
 * break never falls inside a UTF-8 sequence, so only the unfinished line at a
 * chunk's end is kept as bytes, and it is bounded by `limit`.
 *
 * Lines end at `\n` (a `\r` before it is dropped); with `anyBreak` (the
 * Server-Sent Events rules) also at a lone `\r`, and a leading BOM is skipped.
 */
export class LineSplitter {
  /** Lines taken so far, the current one included: the 1-based number of the last line taken. */
  lineNumber = 0
  readonly #limit: number
  readonly #anyBreak: boolean
  /** Complete lines, each with its break, from `#pos` on. */
  text = ''
  /** The bounds in `text` of the line `advance()` moved to, its break excluded. */
  lineStart = 0
  lineEnd = 0
  #pos = 0
  /** The region of `#text` holds a `\r` (only looked at with `anyBreak`). */
  #hasCr = false
  /** The first `\r` at or after `#pos` when `#hasCr`, -1 when none is left. */
  #nextCr = -1
  /** The unfinished line's bytes. */
  #partial: Buffer[] | null = null
  #partialSize = 0
  /** The last region ended with `\r`: a `\n` opening the next chunk belongs to it. */
  #skipLf = false
  #atStart: boolean
  /** The limit was crossed at the end of the lines in `#text`. */
  #tooLong = false

  readonly #tooLarge: () => Error

  /** `tooLarge` makes the error `take()` throws once a line is over `limit` bytes. */
  constructor (limit: number, anyBreak: boolean, tooLarge: () => Error) {
    this.#limit = limit
    this.#tooLarge = tooLarge
    this.#anyBreak = anyBreak
    this.#atStart = anyBreak
  }

  /** The next complete line, or `undefined` until more bytes are fed; throws once a line is over the limit. */
  take (): string | undefined {
    return this.advance() ? this.text.slice(this.lineStart, this.lineEnd) : undefined
  }

  /**
   * Moves to the next complete line and sets `lineStart` and `lineEnd` (its
   * bounds in `text`, break excluded): a parser that reads fields in place
   * slices only what it keeps. `false` until more bytes are fed; throws once
   * a line is over the limit.
   */
  advance (): boolean {
    const text = this.text
    const pos = this.#pos
    if (pos >= text.length) {
      if (this.#tooLong) throw this.#tooLarge()
      return false
    }
    this.lineNumber++
    this.lineStart = pos
    let end = text.indexOf('\n', pos)
    if (this.#hasCr) {
      let cr = this.#nextCr
      if (cr !== -1 && cr < pos) cr = this.#nextCr = text.indexOf('\r', pos)
      if (cr !== -1 && (cr < end || end === -1)) {
        this.#pos = text.charCodeAt(cr + 1) === LF ? cr + 2 : cr + 1
        this.lineEnd = cr
        return true
      }
    }
    this.#pos = end + 1
    if (end > pos && text.charCodeAt(end - 1) === CR) end--
    this.lineEnd = end
    return true
  }

  /** Adds a chunk; call it only when `take()` returned `undefined`. */
  feed (chunk: Buffer): void {
    let start = 0
    if (this.#atStart) {
      this.#atStart = false
      if (chunk[0] === 0xEF && chunk[1] === 0xBB && chunk[2] === 0xBF) start = 3
    }
    if (this.#skipLf) {
      this.#skipLf = false
      if (chunk[start] === LF) start++
    }
    let first = chunk.indexOf(LF, start)
    let last = first === -1 ? -1 : chunk.lastIndexOf(LF)
    let hasCr = false
    if (this.#anyBreak) {
      const firstCr = chunk.indexOf(CR, start)
      if (firstCr !== -1) {
        hasCr = true
        if (first === -1 || firstCr < first) first = firstCr
        const lastCr = chunk.lastIndexOf(CR)
        if (lastCr > last) last = lastCr
        // A region ending in `\r` may be a CRLF cut in two.
        this.#skipLf = last === chunk.length - 1 && chunk[last] === CR
      }
    }
    if (first === -1) {
      this.#keep(chunk, start)
      return
    }
    if (last + 1 - start + this.#partialSize > this.#limit) last = this.#lastWithinLimit(chunk, start, first, last)
    let text: string
    if (this.#partial === null) {
      text = chunk.toString('utf8', start, last + 1)
    } else {
      this.#partial.push(chunk.subarray(start, first + 1))
      const head = Buffer.concat(this.#partial, this.#partialSize + first + 1 - start).toString('utf8')
      this.#partial = null
      this.#partialSize = 0
      text = first === last ? head : head + chunk.toString('utf8', first + 1, last + 1)
    }
    this.text = text
    this.#pos = 0
    this.#hasCr = hasCr
    this.#nextCr = hasCr ? text.indexOf('\r') : -1
    if (this.#tooLong) return
    if (last + 1 < chunk.length) this.#keep(chunk, last + 1)
  }

  /** The body ended: its last line, if it had no break. */
  finish (): string | undefined {
    if (this.#partial === null) return undefined
    const line = Buffer.concat(this.#partial, this.#partialSize).toString('utf8')
    this.#partial = null
    this.#partialSize = 0
    this.lineNumber++
    return line
  }

  #keep (chunk: Buffer, from: number): void {
    const size = chunk.length - from
    if (size === 0) return
    this.#partialSize += size
    if (this.#partialSize > this.#limit) {
      this.#partial = null
      this.#tooLong = true
      return
    }
    if (this.#partial === null) this.#partial = [chunk.subarray(from)]
    else this.#partial.push(chunk.subarray(from))
  }

  /**
   * The end of the last line before the first one over the limit (`-1` when
   * that is the first), found only for a chunk whose lines might be over it.
   */
  #lastWithinLimit (chunk: Buffer, start: number, first: number, last: number): number {
    if (first - start + this.#partialSize > this.#limit) {
      this.#partial = null
      this.#partialSize = 0
      this.#tooLong = true
      return start - 1
    }
    let end = first
    for (;;) {
      const next = this.#nextBreak(chunk, end + 1)
      if (next === -1 || next > last) return end
      if (next - end - 1 > this.#limit) {
        this.#tooLong = true
        return end
      }
      end = next
    }
  }

  #nextBreak (chunk: Buffer, from: number): number {
    const lf = chunk.indexOf(LF, from)
    if (!this.#anyBreak) return lf
    const cr = chunk.indexOf(CR, from)
    return cr !== -1 && (lf === -1 || cr < lf) ? cr : lf
  }
}
