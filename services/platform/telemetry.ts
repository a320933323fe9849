import { diag, DiagLogLevel, metrics, trace, type TracerProvider, type MeterProvider as ApiMeterProvider } from "@opentelemetry/api";
import { OTLPMetricExporter as OtlpMetricsGrpc } from "@opentelemetry/exporter-metrics-otlp-grpc";
import { OTLPMetricExporter as OtlpMetricsHttp } from "@opentelemetry/exporter-metrics-otlp-http";
import { OTLPMetricExporter as OtlpMetricsProto } from "@opentelemetry/exporter-metrics-otlp-proto";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { OTLPTraceExporter as OtlpTracesGrpc } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPTraceExporter as OtlpTracesHttp } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as OtlpTracesProto } from "@opentelemetry/exporter-trace-otlp-proto";
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from "@opentelemetry/resources";
import {
  AggregationType,
  ConsoleMetricExporter,
  InstrumentType,
  MeterProvider,
  PeriodicExportingMetricReader,
  type IMetricReader,
} from "@opentelemetry/sdk-metrics";
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  NodeTracerProvider,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import pkg from "../../package.json" with { type: "json" };
import { LimitedWarnings, type Logger } from "./log.ts";
import { exporterNames, metricExportInterval, otlpProtocol, prometheusAddress, type Env } from "./telemetry-env.ts";

/** The instrumentation scope of every span and metric of the suite. */
export const SCOPE = "vaccine";

export interface Telemetry {
  tracerProvider: TracerProvider;
  meterProvider: ApiMeterProvider;
  /** Flushes and stops exporters; call on shutdown so the last spans are not lost. */
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  serviceName: string;
  env?: Record<string, string | undefined>;
  /** Where a Prometheus exporter listens unless OTEL_EXPORTER_PROMETHEUS_HOST says: the services' host (default loopback). */
  host?: string;
  /** Extra processors and readers, e.g. in-memory ones in tests. */
  spanProcessors?: SpanProcessor[];
  metricReaders?: IMetricReader[];
  /** Install as the global providers (the process entrypoint does; tests need not). */
  global?: boolean;
}

/**
 * Buckets of every histogram in seconds: the SDK's defaults (0 to 10000) are meant for
 * milliseconds and would put every latency of seconds in the first bucket. 60 s is the
 * longest operation budget the deployment's shutdown timeout assumes (deploy/README.md).
 */
export const SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

function spanExporter(name: string, env: Env): SpanExporter {
  if (name === "console") return new ConsoleSpanExporter();
  if (name !== "otlp") throw new Error(`OTEL_TRACES_EXPORTER: unsupported exporter "${name}" (otlp, console, none)`);
  const { protocol } = otlpProtocol(env, "TRACES");
  // The exporters read their endpoint, headers and timeout from the OTEL_EXPORTER_OTLP_* variables.
  if (protocol === "grpc") return new OtlpTracesGrpc();
  if (protocol === "http/json") return new OtlpTracesHttp();
  if (protocol === "http/protobuf") return new OtlpTracesProto();
  throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol "${protocol}" (grpc, http/protobuf, http/json)`);
}

function metricReader(name: string, env: Env, host: string): IMetricReader {
  if (name === "prometheus") return new PrometheusExporter(prometheusAddress(env, host));
  const exportIntervalMillis = metricExportInterval(env);
  if (name === "console") return new PeriodicExportingMetricReader({ exporter: new ConsoleMetricExporter(), exportIntervalMillis });
  if (name !== "otlp") throw new Error(`OTEL_METRICS_EXPORTER: unsupported exporter "${name}" (otlp, prometheus, console, none)`);
  const { protocol } = otlpProtocol(env, "METRICS");
  const exporter =
    protocol === "grpc" ? new OtlpMetricsGrpc() : protocol === "http/json" ? new OtlpMetricsHttp() : protocol === "http/protobuf" ? new OtlpMetricsProto() : undefined;
  if (!exporter) throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol "${protocol}" (grpc, http/protobuf, http/json)`);
  return new PeriodicExportingMetricReader({ exporter, exportIntervalMillis });
}

/**
 * Tracer and meter providers for one process. Nothing is exported unless the standard
 * OTEL_* variables ask for it; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured.
 */
export function setupTelemetry(options: TelemetryOptions): Telemetry {
  const env = options.env ?? process.env;
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: options.serviceName, [ATTR_SERVICE_VERSION]: pkg.version }))
    .merge(detectResources({ detectors: [envDetector] }));
  const tracerProvider = new NodeTracerProvider({
    resource,
    spanProcessors: [
      ...exporterNames(env, "TRACES").map((name) => new BatchSpanProcessor(spanExporter(name, env))),
      ...(options.spanProcessors ?? []),
    ],
  });
  const meterProvider = new MeterProvider({
    resource,
    views: [
      {
        instrumentType: InstrumentType.HISTOGRAM,
        instrumentUnit: "s",
        aggregation: { type: AggregationType.EXPLICIT_BUCKET_HISTOGRAM, options: { boundaries: SECONDS_BUCKETS } },
      },
    ],
    readers: [...exporterNames(env, "METRICS").map((name) => metricReader(name, env, options.host ?? "127.0.0.1")), ...(options.metricReaders ?? [])],
  });
  if (options.global) {
    // Registers the W3C trace-context propagator and the async-hooks context manager too.
    tracerProvider.register();
    metrics.setGlobalMeterProvider(meterProvider);
  }
  return {
    tracerProvider,
    meterProvider,
    async shutdown() {
      await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown()]);
      if (options.global) {
        trace.disable();
        metrics.disable();
      }
    },
  };
}

/**
 * Where the process's telemetry goes, said once at start, and OpenTelemetry's own warnings and
 * errors (an export that fails: the collector away) in the log, each kind at most once every
 * `everyMs` (LimitedWarnings): an export that failed used to say nothing, and an empty dashboard
 * told nothing.
 */
export function reportTelemetry(logger: Logger, env: Env = process.env, everyMs = 60_000): void {
  const otlp = env.OTEL_EXPORTER_OTLP_ENDPOINT;
  logger.info({ traces: exporterNames(env, "TRACES"), metrics: exporterNames(env, "METRICS"), ...(otlp && { otlp_endpoint: otlp }) }, "telemetry exporters");
  const warnings = new LimitedWarnings(logger, everyMs);
  const say = (message: string, ...args: unknown[]) => {
    const detail = args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : JSON.stringify(a))).join(" ");
    // Keyed by the start of the message: a failure's own text may follow it.
    warnings.warn({ detail: detail.slice(0, 500) }, `telemetry: ${message}`, message.slice(0, 60));
  };
  const quiet = () => {};
  diag.setLogger({ error: say, warn: say, info: quiet, debug: quiet, verbose: quiet }, DiagLogLevel.WARN);
}
