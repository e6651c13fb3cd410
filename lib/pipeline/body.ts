import type { Dispatcher } from 'undici'
import { FormDataEncoder } from 'form-data-encoder'
import { coalesced } from './coalesced'
import { type CallDetails, InvalidRequestError } from '../errors'
import type { HeaderList } from '../headers'
import { type Fail, isPlainObject } from '../validate'

/**
 * A call's body, from `json`, `form` or `body`, as undici is given it. What
 * undici measures itself (strings, bytes, a `Blob`) it sends with a
 * `content-length`; a multipart body is measured here; a stream goes chunked.
 */

type DispatchBody = Dispatcher.DispatchOptions['body']

export const FORM_CONTENT_TYPE = 'application/x-www-form-urlencoded'

/** A body made once, before the first attempt. */
export interface MadeBody {
  readonly body: DispatchBody
  /** `undefined` when the body does not say (a string, bytes, a stream, a `Blob` without a type). */
  readonly contentType: string | undefined
  /** Set only where undici could not measure the body itself (a multipart body). */
  readonly contentLength: string | undefined
  /** A stream or async iterable is read once: no retry, hedge, resend or body-keeping redirect. */
  readonly replayable: boolean
}

const ACCEPTED = 'a string, Buffer, Uint8Array, ArrayBuffer, Blob, URLSearchParams, FormData, readable stream, async iterable, or a function returning one of them'

/** What a value is, by name, for a message: `a Map`, `a plain object`, `the number 1`. */
export function typeName (value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'number') return `the number ${value}`
  if (typeof value !== 'object') return `a ${typeof value}`
  if (isPlainObject(value)) return 'a plain object'
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name
  return typeof name === 'string' && name !== '' ? `a ${name}` : 'an object'
}

/** A `FormData` from Node's global constructor, undici's, or any copy that keeps the standard's shape. */
function isFormData (value: object): value is FormData {
  return (value as Record<symbol, unknown>)[Symbol.toStringTag] === 'FormData' &&
    typeof (value as FormData).append === 'function' && typeof (value as FormData).entries === 'function'
}

function isStream (value: object): boolean {
  return typeof (value as { pipe?: unknown }).pipe === 'function' ||
    typeof (value as Record<symbol, unknown>)[Symbol.asyncIterator] === 'function'
}

/** `form` as `application/x-www-form-urlencoded`: an object's arrays repeat their key, `undefined` leaves it out. */
export function encodeForm (form: unknown, option: string, fail: Fail): string {
  if (form instanceof URLSearchParams) return form.toString()
  if (!isPlainObject(form)) fail(option, `must be an object or a URLSearchParams, got ${typeName(form)}`)
  const params = new URLSearchParams()
  for (const key of Object.keys(form)) {
    const value = form[key]
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) params.append(key, formValue(value[i], `${option}.${key}.${i}`, fail))
    } else if (value !== undefined) {
      params.append(key, formValue(value, `${option}.${key}`, fail))
    }
  }
  return params.toString()
}

function formValue (value: unknown, option: string, fail: Fail): string {
  if (typeof value === 'string') return value
  if ((typeof value === 'number' && Number.isFinite(value)) || typeof value === 'boolean') return String(value)
  return fail(option, `must be a string, a finite number or a boolean, got ${typeName(value)}`)
}

/** A multipart body with a fresh boundary; its `Blob`/`File` parts are read as they are sent. */
function multipart (form: FormData): MadeBody {
  const encoder = new FormDataEncoder(form)
  // undici sends any async iterable, though its types list only streams.
  return { body: coalesced(encoder.encode()) as unknown as DispatchBody, contentType: encoder.contentType, contentLength: encoder.contentLength, replayable: true }
}

/**
 * A `body` option (or, with `fresh` false, what a body function returned) as
 * undici takes it. `null` stands for a function or a `FormData` given as the
 * option: their body is made for each attempt by a `FreshBody`.
 */
export function makeBody (given: unknown, option: string, fail: Fail, fresh: boolean): MadeBody | null {
  if (typeof given === 'string' || given instanceof Uint8Array) return { body: given, contentType: undefined, contentLength: undefined, replayable: true }
  if (typeof given === 'function' && fresh) return null
  if (typeof given === 'object' && given !== null) {
    if (given instanceof ArrayBuffer) return { body: Buffer.from(given), contentType: undefined, contentLength: undefined, replayable: true }
    if (given instanceof URLSearchParams) return { body: given.toString(), contentType: FORM_CONTENT_TYPE, contentLength: undefined, replayable: true }
    if (given instanceof Blob) return { body: given as unknown as DispatchBody, contentType: given.type === '' ? undefined : given.type, contentLength: undefined, replayable: true }
    if (isFormData(given)) return fresh ? null : multipart(given)
    if (isStream(given)) return { body: given as DispatchBody, contentType: undefined, contentLength: undefined, replayable: false }
    if (typeof (given as { then?: unknown }).then === 'function') fail(option, 'must not be a promise: a body function returns the body itself')
  }
  return fail(option, `must be ${ACCEPTED}, got ${typeName(given)}`)
}

/** The headers a body adds: its content type (unless the call set one) and, when undici cannot measure it, its length. */
export function withBodyHeaders (headers: HeaderList, made: MadeBody, setContentType: boolean): HeaderList {
  const type = setContentType ? made.contentType : undefined
  if (type === undefined && made.contentLength === undefined) return headers
  const out = headers.slice()
  if (type !== undefined) out.push('content-type', type)
  if (made.contentLength !== undefined) out.push('content-length', made.contentLength)
  return out
}

/**
 * A body made again for every attempt: a `FormData` (encoded again, with a
 * new boundary) or a function (called again, so a stream upload can be
 * retried). Only calls with such a body carry one.
 */
export class FreshBody {
  readonly #source: FormData | (() => unknown)
  readonly #setContentType: boolean
  readonly #details: CallDetails

  constructor (source: FormData | (() => unknown), setContentType: boolean, details: CallDetails) {
    this.#source = source
    this.#setContentType = setContentType
    this.#details = details
  }

  /** One attempt's dispatch options: `base` with this attempt's body and its headers. Throws `InvalidRequestError`. */
  options<O extends Dispatcher.DispatchOptions & { headers: HeaderList }> (base: O): O {
    const source = this.#source
    let made: MadeBody
    if (typeof source === 'function') {
      const details = this.#details
      let given: unknown
      try {
        given = source()
      } catch (error) {
        throw new InvalidRequestError({ ...details, cause: error }, 'body function threw (its error is the cause)')
      }
      made = makeBody(given, 'body()', (option, reason) => { throw new InvalidRequestError(details, `${option} ${reason}`) }, false) as MadeBody
    } else {
      made = multipart(source)
    }
    return { ...base, body: made.body, headers: withBodyHeaders(base.headers, made, this.#setContentType) }
  }
}
