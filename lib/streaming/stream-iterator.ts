import { HttpClientError } from '../errors'
import { BOUNDARY, type StreamCore, type StreamReader } from './stream-core'

/** Turns a body's chunks into items, lazily: `take()` until `undefined`, then `feed()` the next chunk. */
export interface BodyParser<T> {
  feed(chunk: Buffer): void
  /** The next complete item, or `undefined` until more bytes are fed. */
  take(): T | undefined
  /** The body ended: what its bytes still hold, if anything. */
  finish(): T | undefined
  /** Another connection's body follows: drop what is pending of this one's. */
  reset?(): void
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined })

/**
 * The async iterator of `lines()`, `ndjson()` and `events()`. Items are
 * parsed when asked for, from the chunks the stream has queued, so a slow
 * consumer leaves bytes, not parsed items, in memory. A consumer waiting for
 * an item is answered from the chunk that completes it.
 */
export class StreamIterator<T> implements AsyncIterableIterator<T>, StreamReader {
  readonly #core: StreamCore
  readonly #parser: BodyParser<T>
  #done = false
  #pulling = false
  #resolve: ((result: IteratorResult<T>) => void) | null = null
  #reject: ((error: unknown) => void) | null = null

  constructor (core: StreamCore, parser: BodyParser<T>) {
    this.#core = core
    this.#parser = parser
  }

  [Symbol.asyncIterator] (): this {
    return this
  }

  next (): Promise<IteratorResult<T>> {
    if (this.#done) return Promise.resolve(DONE)
    let value: T | undefined
    try {
      // Most items come from a chunk already fed: no chunk to take, no
      // reentrant wake to guard against.
      value = this.#parser.take()
      if (value === undefined) value = this.#pull()
    } catch (error) {
      return Promise.reject(this.#end(error))
    }
    if (value !== undefined) {
      this.#core.delivered++
      return Promise.resolve({ done: false, value })
    }
    if (this.#done) return Promise.resolve(DONE)
    return new Promise<IteratorResult<T>>((resolve, reject) => {
      this.#resolve = resolve
      this.#reject = reject
    })
  }

  /** `break`, `return` or a `throw` in the loop: the stream is closed and its connection freed. */
  return (): Promise<IteratorResult<T>> {
    this.#core.close()
    this.#finish(DONE)
    return Promise.resolve(DONE)
  }

  /** Bytes, the end or a failure came: answers a waiting consumer if it can. */
  wake (): void {
    if (this.#resolve === null || this.#pulling) return
    let value: T | undefined
    try {
      value = this.#pull()
    } catch (error) {
      const reject = this.#reject as (error: unknown) => void
      this.#resolve = null
      this.#reject = null
      reject(this.#end(error))
      return
    }
    if (value !== undefined) {
      this.#core.delivered++
      this.#finish({ done: false, value })
    } else if (this.#done) {
      this.#finish(DONE)
    }
  }

  #finish (result: IteratorResult<T>): void {
    const resolve = this.#resolve
    if (resolve === null) return
    this.#resolve = null
    this.#reject = null
    resolve(result)
  }

  /** The next item; `undefined` with `#done` set when there are no more. Throws the stream's failure. */
  #pull (): T | undefined {
    const core = this.#core
    const parser = this.#parser
    this.#pulling = true
    try {
      for (;;) {
        const value = parser.take()
        if (value !== undefined) return value
        const chunk = core.takeChunk()
        if (chunk === BOUNDARY) {
          parser.reset?.()
          core.reconnector?.caughtUp()
          continue
        }
        if (chunk !== null) {
          parser.feed(chunk)
          continue
        }
        if (core.closed) {
          this.#done = true
          return undefined
        }
        if (core.failure !== undefined) throw core.failure
        if (!core.ended) return undefined
        this.#done = true
        return parser.finish()
      }
    } finally {
      this.#pulling = false
    }
  }

  /** The iteration ends with `error`: ours says how many items came before it. */
  #end (error: unknown): unknown {
    this.#done = true
    const core = this.#core
    if (core.failure === undefined) core.abandon(error)
    if (error instanceof HttpClientError && !core.failureIsCallers) error.delivered = core.delivered
    return error
  }
}
