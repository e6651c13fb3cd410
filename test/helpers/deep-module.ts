import { Readable, Transform, Writable, pipeline } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { HttpClient } from '../../lib/api/http-client'

/**
 * A service module that never sees the inbound request: it is handed a client
 * once, at setup, and later makes its calls from the places where an async
 * context is easiest to lose (after awaits, in timer callbacks, in stream
 * events). The upstream must still receive the inbound request's id.
 */
export interface DeepService {
  /** One call per step, in this order; resolves with the steps' status codes. */
  run (marker: string): Promise<number[]>
}

export const DEEP_STEPS = ['awaits', 'timeout', 'immediate', 'data', 'transform', 'pipeline', 'body-data'] as const

export function createDeepService (client: HttpClient): DeepService {
  async function hit (marker: string, step: string): Promise<number> {
    const res = await client.get('/deep', { query: { marker, step } })
    await res.text()
    return res.statusCode
  }

  function inTimeout (marker: string): Promise<number> {
    return new Promise((resolve, reject) => {
      setTimeout(() => { hit(marker, 'timeout').then(resolve, reject) }, 5)
    })
  }

  function inImmediate (marker: string): Promise<number> {
    return new Promise((resolve, reject) => {
      setImmediate(() => { hit(marker, 'immediate').then(resolve, reject) })
    })
  }

  async function * slowChunks (): AsyncGenerator<string> {
    await sleep(2)
    yield 'first'
    await new Promise((resolve) => setImmediate(resolve))
    yield 'second'
  }

  function inDataHandler (marker: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const source = Readable.from(slowChunks())
      let started = false
      source.on('data', () => {
        if (started) return
        started = true
        hit(marker, 'data').then(resolve, reject)
      })
      source.on('error', reject)
    })
  }

  function inPipeline (marker: string): Promise<number[]> {
    return new Promise((resolve, reject) => {
      let fromTransform: Promise<number> | undefined
      const transform = new Transform({
        transform (chunk: Buffer, _encoding, callback) {
          fromTransform ??= hit(marker, 'transform')
          callback(null, chunk)
        }
      })
      const sink = new Writable({
        write (_chunk, _encoding, callback) { setTimeout(callback, 1) }
      })
      pipeline(Readable.from(slowChunks()), transform, sink, (error) => {
        if (error != null) {
          reject(error)
          return
        }
        Promise.all([fromTransform ?? Promise.resolve(0), hit(marker, 'pipeline')]).then(resolve, reject)
      })
    })
  }

  // The body of an upstream response is fed by a pooled socket that may have
  // been opened while serving another request.
  async function inResponseBodyData (marker: string): Promise<number> {
    const res = await client.get('/body', { query: { marker, step: 'body' } })
    return await new Promise((resolve, reject) => {
      let started: Promise<number> | undefined
      res.body.on('data', () => {
        started ??= hit(marker, 'body-data')
      })
      res.body.on('error', reject)
      res.body.on('end', () => {
        (started ?? Promise.reject(new Error('no body data'))).then(resolve, reject)
      })
    })
  }

  return {
    async run (marker) {
      await Promise.resolve()
      await sleep(1)
      await new Promise((resolve) => setImmediate(resolve))
      const statuses = [await hit(marker, 'awaits')]
      statuses.push(await inTimeout(marker))
      statuses.push(await inImmediate(marker))
      statuses.push(await inDataHandler(marker))
      statuses.push(...await inPipeline(marker))
      statuses.push(await inResponseBodyData(marker))
      return statuses
    }
  }
}
