import diagnosticsChannel from 'node:diagnostics_channel'
import type { Test } from 'tap'

/** Polls `check` every 10 ms until it holds, for at most `ms` (3 s when left out); its last answer. */
export async function eventually (check: () => boolean, ms = 3_000): Promise<boolean> {
  const until = Date.now() + ms
  while (!check()) {
    if (Date.now() > until) return false
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return true
}

/** Every message published on `channel` while the test runs, in order. */
export function published<T> (t: Test, channel: string): T[] {
  const events: T[] = []
  const listener = (message: unknown): void => { events.push(message as T) }
  diagnosticsChannel.subscribe(channel, listener)
  t.teardown(() => { diagnosticsChannel.unsubscribe(channel, listener) })
  return events
}
