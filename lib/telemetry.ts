/** Replaced by the OpenTelemetry layer. */
export function installTelemetry (): void {}
