import { checkBoolean, checkDuration, checkInteger, checkKeys, checkNumber, checkObject, describe, type Fail } from '../validate'

/** `circuitBreaker`, validated and with every default filled in. */
export interface ResolvedBreaker {
  readonly failureThreshold: number
  readonly recoveryMs: number
  readonly halfOpenMaxProbes: number
  readonly openOnRetryAfter: boolean
  /** `undefined`: no failure-ratio rule. */
  readonly failureRatio: number | undefined
  /** `undefined`: no slow-call rule. */
  readonly slowCallMs: number | undefined
  readonly slowCallRatio: number
  readonly minimumThroughput: number
  readonly samplingMs: number
  /** The cap on the doubled open time after failed probes; `recoveryMs` when not given (a failed probe reopens for `recoveryMs`, as in 0.2). */
  readonly recoveryMaxMs: number
}

export const DEFAULT_BREAKER: ResolvedBreaker = Object.freeze({
  failureThreshold: 5,
  recoveryMs: 30_000,
  halfOpenMaxProbes: 1,
  openOnRetryAfter: true,
  failureRatio: undefined,
  slowCallMs: undefined,
  slowCallRatio: 0.5,
  minimumThroughput: 20,
  samplingMs: 10_000,
  recoveryMaxMs: 30_000
})

const BREAKER_KEYS = [
  'failureThreshold', 'recoveryMs', 'halfOpenMaxProbes', 'openOnRetryAfter',
  'failureRatio', 'slowCallMs', 'slowCallRatio', 'minimumThroughput', 'samplingMs', 'recoveryMaxMs'
]

/** A share of the judged attempts: more than 0, at most 1. */
function checkRatio (value: unknown, path: string, fail: Fail): number {
  const ratio = checkNumber(value, path, fail, 0, 1)
  if (ratio === 0) fail(path, `must be more than 0 (a share of the attempts, up to 1), got ${describe(value)}`)
  return ratio
}

/** Validates `circuitBreaker` (already merged with `defaults`); `path` names it in errors. */
export function resolveBreaker (value: unknown, path: string, fail: Fail): ResolvedBreaker | false {
  if (value === false) return false
  if (value === undefined) return DEFAULT_BREAKER
  const given = checkObject(value, path, fail)
  checkKeys(given, BREAKER_KEYS, path, fail)
  const at = (key: string): string => `${path}.${key}`
  const d = DEFAULT_BREAKER
  const recoveryMs = given.recoveryMs === undefined ? d.recoveryMs : checkDuration(given.recoveryMs, at('recoveryMs'), fail)
  const recoveryMaxMs = given.recoveryMaxMs === undefined ? recoveryMs : checkDuration(given.recoveryMaxMs, at('recoveryMaxMs'), fail)
  if (recoveryMaxMs < recoveryMs) fail(at('recoveryMaxMs'), `must not be less than recoveryMs (${recoveryMs}), got ${recoveryMaxMs}`)
  return Object.freeze({
    failureThreshold: given.failureThreshold === undefined ? d.failureThreshold : checkInteger(given.failureThreshold, at('failureThreshold'), fail, 1),
    recoveryMs,
    halfOpenMaxProbes: given.halfOpenMaxProbes === undefined ? d.halfOpenMaxProbes : checkInteger(given.halfOpenMaxProbes, at('halfOpenMaxProbes'), fail, 1),
    openOnRetryAfter: given.openOnRetryAfter === undefined ? d.openOnRetryAfter : checkBoolean(given.openOnRetryAfter, at('openOnRetryAfter'), fail),
    failureRatio: given.failureRatio === undefined ? undefined : checkRatio(given.failureRatio, at('failureRatio'), fail),
    slowCallMs: given.slowCallMs === undefined ? undefined : checkDuration(given.slowCallMs, at('slowCallMs'), fail),
    slowCallRatio: given.slowCallRatio === undefined ? d.slowCallRatio : checkRatio(given.slowCallRatio, at('slowCallRatio'), fail),
    minimumThroughput: given.minimumThroughput === undefined ? d.minimumThroughput : checkInteger(given.minimumThroughput, at('minimumThroughput'), fail, 1),
    samplingMs: given.samplingMs === undefined ? d.samplingMs : checkDuration(given.samplingMs, at('samplingMs'), fail),
    recoveryMaxMs
  })
}
