/**
 * What the standard OTEL_* variables ask of telemetry.ts, read and checked apart from the
 * exporters, so that configuration can refuse a bad value at start (exit 2, naming it)
 * without loading them. A typo must not reach the SDK: an exporter it does not know threw
 * from deep inside start-up, and a non-numeric interval made it export every millisecond.
 */
export type Env = Record<string, string | undefined>;
export type Signal = "TRACES" | "METRICS";

const EXPORTERS: Record<Signal, string[]> = { TRACES: ["otlp", "console"], METRICS: ["otlp", "prometheus", "console"] };
const PROTOCOLS = ["grpc", "http/protobuf", "http/json"];

function list(raw: string | undefined): string[] {
  return (raw ?? "").split(",").map((s) => s.trim()).filter((s) => s && s !== "none");
}

/** Exporter names: an explicit OTEL_*_EXPORTER wins; else otlp when an endpoint is set; else nothing. */
export function exporterNames(env: Env, signal: Signal): string[] {
  const explicit = env[`OTEL_${signal}_EXPORTER`];
  if (explicit !== undefined) return list(explicit);
  return env.OTEL_EXPORTER_OTLP_ENDPOINT || env[`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`] ? ["otlp"] : [];
}

/** The OTLP protocol of a signal, and the variable that set it. */
export function otlpProtocol(env: Env, signal: Signal): { protocol: string; variable: string } {
  const own = `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`;
  if (env[own] !== undefined) return { protocol: env[own]!, variable: own };
  return { protocol: env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf", variable: "OTEL_EXPORTER_OTLP_PROTOCOL" };
}

/** Milliseconds between metric exports (OTEL_METRIC_EXPORT_INTERVAL). */
export function metricExportInterval(env: Env): number {
  return Number(env.OTEL_METRIC_EXPORT_INTERVAL ?? 60_000);
}

/** Where a Prometheus exporter listens: OTEL_EXPORTER_PROMETHEUS_HOST, else the services' own host. */
export function prometheusAddress(env: Env, host: string): { host: string; port: number } {
  return { host: env.OTEL_EXPORTER_PROMETHEUS_HOST ?? host, port: Number(env.OTEL_EXPORTER_PROMETHEUS_PORT ?? 9464) };
}

/** Every OTEL_* value telemetry.ts would fail on or misread, one line each. */
export function telemetryProblems(env: Env): string[] {
  const problems: string[] = [];
  for (const signal of ["TRACES", "METRICS"] as const) {
    const names = exporterNames(env, signal);
    for (const name of names) {
      if (!EXPORTERS[signal].includes(name)) problems.push(`OTEL_${signal}_EXPORTER="${env[`OTEL_${signal}_EXPORTER`]}" is invalid: expected ${[...EXPORTERS[signal], "none"].join(", ")}`);
    }
    const { protocol, variable } = otlpProtocol(env, signal);
    if (names.includes("otlp") && !PROTOCOLS.includes(protocol)) problems.push(`${variable}="${protocol}" is invalid: expected ${PROTOCOLS.join(", ")}`);
  }
  // An endpoint that is no http(s) URL exported nothing, and said nothing.
  for (const variable of ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]) {
    const value = env[variable];
    if (value && !/^https?:$/.test(URL.parse(value)?.protocol ?? "")) problems.push(`${variable}="${value}" is invalid: expected an http:// or https:// URL`);
  }
  const metrics = exporterNames(env, "METRICS");
  const interval = metricExportInterval(env);
  if (metrics.some((n) => n !== "prometheus") && !(Number.isInteger(interval) && interval > 0)) {
    problems.push(`OTEL_METRIC_EXPORT_INTERVAL="${env.OTEL_METRIC_EXPORT_INTERVAL}" is invalid: expected milliseconds, an integer above 0`);
  }
  const port = Number(env.OTEL_EXPORTER_PROMETHEUS_PORT ?? 9464);
  if (metrics.includes("prometheus") && !(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    problems.push(`OTEL_EXPORTER_PROMETHEUS_PORT="${env.OTEL_EXPORTER_PROMETHEUS_PORT}" is invalid: expected a port, 0 to 65535`);
  }
  return [...new Set(problems)];
}
