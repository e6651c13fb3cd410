/**
 * The vocabulary of an attempt's life, shared by the attempt (attempt.ts),
 * its body (attempt-body.ts) and what judges it (outcome.ts).
 */

/** The controller undici 7 and 8 hand a handler in `onRequestStart`. */
export interface DispatchController {
  abort(reason: Error): void
  pause(): void
  resume(): void
}

/** Where an attempt is in its life. */
export const Phase = { Queued: 0, Sent: 1, Streaming: 2, Buffering: 3, Done: 4 } as const
export type PhaseValue = typeof Phase[keyof typeof Phase]

/** Why we cut an attempt short; `None` when undici ended it. `Abandoned`: its body's reader destroyed the stream. */
export const Cut = { None: 0, Timeout: 1, Caller: 2, Closed: 3, Loser: 4, TooLarge: 5, Abandoned: 6 } as const
export type CutValue = typeof Cut[keyof typeof Cut]
