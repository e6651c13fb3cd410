import { Readable } from 'node:stream'
import { HttpClientError } from '../errors'
import type { StreamCore, StreamReader } from './stream-core'

/**
 * `HttpStream.body`: the bytes as a `Readable`, fed from the stream's queue
 * as the `Readable` asks for them. Its events are emitted in the caller's
 * async context, not undici's.
 */
export class BodyReader implements StreamReader {
  readonly readable: Readable
  readonly #core: StreamCore
  #wanted = false
  #pumping = false
  readonly #pump = (): void => { this.#drain() }

  constructor (core: StreamCore) {
    this.#core = core
    this.readable = new Readable({
      read: () => {
        this.#wanted = true
        this.wake()
      },
      destroy: (error, callback) => {
        core.close()
        callback(error)
      }
    })
  }

  wake (): void {
    if (!this.#wanted || this.#pumping) return
    this.#core.scope.runInAsyncScope(this.#pump)
  }

  #drain (): void {
    const core = this.#core
    const readable = this.readable
    this.#pumping = true
    try {
      for (;;) {
        const chunk = core.takeChunk()
        if (chunk === null) break
        core.delivered += chunk.length
        if (!readable.push(chunk)) {
          this.#wanted = false
          return
        }
      }
      if (core.closed) return
      if (core.failure !== undefined) {
        const error = core.failure
        if (error instanceof HttpClientError && !core.failureIsCallers) error.delivered = core.delivered
        this.#wanted = false
        readable.destroy(error as Error)
      } else if (core.ended) {
        this.#wanted = false
        readable.push(null)
      }
    } finally {
      this.#pumping = false
    }
  }
}
