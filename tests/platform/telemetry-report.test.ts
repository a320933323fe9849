// Where telemetry goes, said at start, and an export that fails said in the log (at most once
// a minute per kind), rather than nothing; an endpoint that is no URL stops the start.
import { diag } from "@opentelemetry/api";
import { afterAll, describe, expect, it } from "vitest";
import { createLogger } from "../../services/platform/log.ts";
import { telemetryProblems } from "../../services/platform/telemetry-env.ts";
import { reportTelemetry, setupTelemetry } from "../../services/platform/telemetry.ts";

afterAll(() => diag.disable());

describe("telemetry reports", () => {
  it("names the exporters at start, and says once when exports fail", { timeout: 60_000 }, async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line)) });
    // Nothing listens on port 1: every export fails.
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:1", OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" };
    reportTelemetry(logger, env);
    expect(lines[0]).toMatchObject({ msg: "telemetry exporters", traces: ["otlp"], metrics: ["otlp"], otlp_endpoint: "http://127.0.0.1:1" });
    // The batch processor exports on its timer, as in a running server (a forced flush reports
    // to its caller instead): every 100 ms here.
    process.env.OTEL_BSP_SCHEDULE_DELAY = "100";
    const telemetry = setupTelemetry({ serviceName: "test", env });
    delete process.env.OTEL_BSP_SCHEDULE_DELAY;
    const tracer = telemetry.tracerProvider.getTracer("t");
    const warned = () => lines.filter((l) => l.level === "warn" && String(l.msg).startsWith("telemetry: "));
    for (const end = Date.now() + 30_000; warned().length === 0 && Date.now() < end; await new Promise((r) => setTimeout(r, 200))) tracer.startSpan("s").end();
    for (let i = 0; i < 10; i++) tracer.startSpan("more").end();
    await new Promise((r) => setTimeout(r, 1000));
    void telemetry.shutdown().catch(() => undefined);
    expect(warned().length).toBeGreaterThan(0);
    // The same failure twice is said once.
    expect(new Set(warned().map((l) => String(l.msg).slice(0, 71))).size).toBe(warned().length);
  });

  it("refuses an OTLP endpoint that is no http(s) URL", () => {
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_ENDPOINT: "not-a-url" })).toContain('OTEL_EXPORTER_OTLP_ENDPOINT="not-a-url" is invalid: expected an http:// or https:// URL');
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "collector:4318" })).toHaveLength(1);
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_ENDPOINT: "https://collector.example:4318" })).toEqual([]);
  });
});
