import t from 'tap'
import type { Dispatcher } from 'undici'

/**
 * The undici line a test run sends through, from `FRH_TEST_UNDICI`: unset or
 * `7` for the clients' own undici 7 pools, `8` for an undici 8 `Agent` given
 * as `dispatcher` (what a user on Node.js 24 with undici 8 does). Anything
 * else is a mistake in the CI script and fails at once rather than quietly
 * testing undici 7.
 */
function requestedLine (): 7 | 8 {
  const value = process.env.FRH_TEST_UNDICI
  if (value === undefined || value === '' || value === '7') return 7
  if (value === '8') return 8
  throw new Error(`FRH_TEST_UNDICI must be 7 or 8, not ${JSON.stringify(value)}`)
}

const agents: Array<{ close(): Promise<void> }> = []
let teardownRegistered = false

/**
 * A fresh undici 8 `Agent` when `FRH_TEST_UNDICI=8`, else `undefined` (the
 * client makes its own pool). A client never closes a dispatcher it was
 * given, so every agent made here is closed when the test file ends.
 */
export function testDispatcher (): Dispatcher | undefined {
  if (requestedLine() === 7) return undefined
  // Loaded only when asked for: undici 8 needs Node.js 22.19 or later.
  const undici8 = require('undici8') as typeof import('undici8')
  const version = (require('undici8/package.json') as { version: string }).version
  if (!version.startsWith('8.')) throw new Error(`the undici8 devDependency is undici ${version}`)
  const agent = new undici8.Agent()
  agents.push(agent)
  if (!teardownRegistered) {
    teardownRegistered = true
    t.teardown(async () => { await Promise.all(agents.splice(0).map((each) => each.close())) })
  }
  // undici 8's Dispatcher type is not undici 7's; the client accepts either at run time.
  return agent as unknown as Dispatcher
}

/**
 * `{ dispatcher }` with an undici 8 `Agent` when `FRH_TEST_UNDICI=8`, else
 * `{}`: spread it into `createHttpClient` (or a plugin client's) options so a
 * test runs unchanged on both lines.
 */
export function dispatcherOption (): { dispatcher?: Dispatcher } {
  const dispatcher = testDispatcher()
  return dispatcher === undefined ? {} : { dispatcher }
}

/** True when the clients send through a given undici 8 `Agent`: their `pool` options do not apply. */
export function usesGivenDispatcher (): boolean {
  return requestedLine() === 8
}
