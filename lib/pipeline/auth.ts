import { describe, hasForbiddenHeaderChars } from '../validate'

/**
 * A bearer token from `auth.token`: asked for before the first call, kept,
 * and asked for again only after a 401. Every call that got a 401 from one
 * token shares one refresh.
 */
export class TokenSource {
  readonly #fetch: () => string | Promise<string>
  #token: string | null = null
  #pending: Promise<string> | null = null

  constructor (fetch: () => string | Promise<string>) {
    this.#fetch = fetch
  }

  /** The token to send now; `null` before the first one and while a refresh is under way. */
  get current (): string | null {
    return this.#token
  }

  /** While no token is known: one from the function, one call of it for every caller waiting. */
  token (): Promise<string> {
    return this.#pending ?? this.#ask()
  }

  /** A 401 answered a call sent with `used`: a new token, asked for once for every call that used it. */
  refresh (used: string): Promise<string> {
    if (this.#pending !== null) return this.#pending
    if (this.#token !== null && this.#token !== used) return Promise.resolve(this.#token)
    return this.#ask()
  }

  #ask (): Promise<string> {
    this.#token = null
    const pending = new Promise<unknown>((resolve) => { resolve(this.#fetch()) }).then(checkToken)
    this.#pending = pending
    pending.then((token) => {
      this.#token = token
      this.#pending = null
    }, () => {
      // The next call asks again.
      this.#pending = null
    })
    return pending
  }
}

function checkToken (token: unknown): string {
  if (typeof token !== 'string' || token === '' || hasForbiddenHeaderChars(token)) {
    throw new TypeError(`auth.token must return a non-empty string without CR, LF or NUL, got ${typeof token === 'string' && token !== '' ? 'one with CR, LF or NUL' : describe(token)}`)
  }
  return token
}

/** The token a call was sent with, so that a 401 can ask for a new one once. */
export interface TokenUse {
  readonly source: TokenSource
  readonly token: string
}
