import type { PreparedRequest } from './prepare'

/** What listening to the caller's `signal` needs of a call. */
export interface SignalWatcher {
  readonly request: PreparedRequest
  /** The listener on the caller's signal, while one is set. */
  callerListener: (() => void) | null
  onCallerAbort(reason: unknown): void
}

/** Listens to the caller's signal until the call (and the body it handed out) is over. */
export function watchSignal (call: SignalWatcher, signal: AbortSignal): void {
  call.callerListener = () => { call.onCallerAbort(signal.reason) }
  signal.addEventListener('abort', call.callerListener)
}

export function releaseSignal (call: SignalWatcher): void {
  if (call.callerListener === null) return
  call.request.signal?.removeEventListener('abort', call.callerListener)
  call.callerListener = null
}
