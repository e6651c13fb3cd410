/** The slice of a pino-compatible logger that the client uses. */
export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
}

function noop (): void {}

/** Used when `createHttpClient()` is given no logger. */
export const silentLogger: Logger = {
  info: noop,
  warn: noop
}
