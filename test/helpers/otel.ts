import { context, metrics, propagation, trace, SpanKind } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici'
import FastifyOtelInstrumentation from '@fastify/otel'
import { resendCountSpanHook } from '../../lib/telemetry/otel'

/** A metric reader that collects only when asked: the test reads the counters it wants, when it wants. */
class OnDemandReader extends MetricReader {
  protected override async onShutdown (): Promise<void> {}
  protected override async onForceFlush (): Promise<void> {}
}

export interface OtelSetup {
  spans: InMemorySpanExporter
  undici: UndiciInstrumentation
  fastifyOtel: FastifyOtelInstrumentation
  /** Registers the global meter provider (a real app may do it after the package is loaded). */
  startMetrics(): void
  /** The data points of `name` on `meter`: their attributes and values. */
  points(meter: string, name: string): Promise<Array<{ attributes: Record<string, unknown>, value: number }>>
}

/**
 * The real OpenTelemetry SDK as an app sets it up: the AsyncLocalStorage
 * context manager, the W3C propagator, a tracer provider exporting to
 * memory, the undici instrumentation with our span hook, @fastify/otel for
 * the inbound side. All of it is process-wide, so a test file sets it up once.
 */
export function setUpOtel (): OtelSetup {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
  propagation.setGlobalPropagator(new W3CTraceContextPropagator())
  const spans = new InMemorySpanExporter()
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] }))
  // Neither instrumentation patches a module: undici's is fed by diagnostics
  // channels, @fastify/otel is a plugin the app registers. Load order is free.
  const undici = new UndiciInstrumentation({ startSpanHook: resendCountSpanHook })
  const fastifyOtel = new FastifyOtelInstrumentation()
  const reader = new OnDemandReader()
  return {
    spans,
    undici,
    fastifyOtel,
    startMetrics () {
      metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }))
    },
    async points (meter, name) {
      const { resourceMetrics } = await reader.collect()
      const found: Array<{ attributes: Record<string, unknown>, value: number }> = []
      for (const scope of resourceMetrics.scopeMetrics) {
        if (scope.scope.name !== meter) continue
        for (const metric of scope.metrics) {
          if (metric.descriptor.name !== name) continue
          for (const point of metric.dataPoints) found.push({ attributes: point.attributes, value: point.value as number })
        }
      }
      return found
    }
  }
}

/** The sum of the counter's points whose attributes include `match`. */
export function countOf (points: Array<{ attributes: Record<string, unknown>, value: number }>, match: Record<string, string>): number {
  let total = 0
  for (const point of points) {
    if (Object.entries(match).every(([key, value]) => point.attributes[key] === value)) total += point.value
  }
  return total
}

/** The spans of one kind, first started first. */
export function spansOfKind (all: readonly ReadableSpan[], kind: SpanKind): ReadableSpan[] {
  return all.filter((span) => span.kind === kind).sort((a, b) => a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1])
}

/** Whether `ancestor` is `span`'s parent, grandparent, ... among `all`. */
export function descendsFrom (span: ReadableSpan, ancestor: ReadableSpan, all: readonly ReadableSpan[]): boolean {
  let parentId = span.parentSpanContext?.spanId
  for (let depth = 0; depth < 10 && parentId !== undefined; depth++) {
    if (parentId === ancestor.spanContext().spanId) return true
    parentId = all.find((candidate) => candidate.spanContext().spanId === parentId)?.parentSpanContext?.spanId
  }
  return false
}

/** The values of every raw header called `name` (a repeated header stays repeated). */
export function rawHeaderValues (rawHeaders: readonly string[], name: string): string[] {
  const values: string[] = []
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].toLowerCase() === name) values.push(rawHeaders[i + 1])
  }
  return values
}

export { SpanKind }
