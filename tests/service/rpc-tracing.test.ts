// Server and client interceptors produce one span per RPC, joined by W3C trace context.
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { context, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";
import { AggregationTemporality, InMemoryMetricExporter, PeriodicExportingMetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { clientTracing } from "../../services/platform/rpc-tracing.ts";
import { exporterNames, telemetryProblems } from "../../services/platform/telemetry-env.ts";
import { setupTelemetry, type Telemetry } from "../../services/platform/telemetry.ts";
import { vaccine } from "../cli/harness.ts";
import { rawGrpc } from "../helpers/raw-grpc.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const exporter = new InMemorySpanExporter();
// Delta: each flush holds the calls since the last one.
const metricExporter = new InMemoryMetricExporter(AggregationTemporality.DELTA);
const metricReader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 3_600_000 });
let telemetry: Telemetry;
let suite: TestSuite;
let server: TestSuite["server"];
beforeAll(async () => {
  telemetry = setupTelemetry({ serviceName: "test", env: {}, spanProcessors: [new SimpleSpanProcessor(exporter)], metricReaders: [metricReader] });
  suite = await startSuite({ tracerProvider: telemetry.tracerProvider, server: { meterProvider: telemetry.meterProvider } });
  server = suite.server;
});
afterAll(async () => {
  await suite.close();
  await telemetry.shutdown();
});

const client = <T extends typeof Health | typeof AlignService>(svc: T) =>
  createClient(svc, createGrpcTransport({ baseUrl: server.url, interceptors: [clientTracing(telemetry.tracerProvider)] }));

describe("RPC spans", () => {
  it("a Score call that waited for a decoding slot says so on its span: how long, behind how many", async () => {
    // The handler's span is the active one where a process registers its telemetry globally.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    onTestFinished(() => void context.disable());
    const slots = suite.deps.inferenceSlots!;
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    const holds = Array.from({ length: slots.limit }, () => slots.run(() => done));
    exporter.reset();
    const call = createClient(ScoreService, createGrpcTransport({ baseUrl: server.url })).generate({ checkpoint: suite.base, prompts: [{ instruction: "Say hi" }], maxNewTokens: 2 });
    while (slots.queued === 0) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    release();
    await Promise.all([...holds, call]);
    const span = exporter.getFinishedSpans().find((s) => s.name === "vaccine.v1.ScoreService/Generate")!;
    const waited = span.events.find((e) => e.name === "waited for a slot");
    expect(waited?.attributes).toMatchObject({ "vaccine.slots.limit": slots.limit, "vaccine.slots.ahead": 0 });
    expect(waited?.attributes?.["vaccine.slots.wait_ms"]).toBeGreaterThanOrEqual(40);
    // A call that found a free slot has no such event.
    exporter.reset();
    await createClient(ScoreService, createGrpcTransport({ baseUrl: server.url })).generate({ checkpoint: suite.base, prompts: [{ instruction: "Say hi" }], maxNewTokens: 2 });
    expect(exporter.getFinishedSpans().find((s) => s.name === "vaccine.v1.ScoreService/Generate")!.events).toEqual([]);
  });

  it("a successful call gives a CLIENT span and its SERVER child with RPC attributes", async () => {
    exporter.reset();
    await client(Health).check({ service: "" });
    const spans = exporter.getFinishedSpans();
    const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER)!;
    const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT)!;
    expect(serverSpan.name).toBe("grpc.health.v1.Health/Check");
    expect(serverSpan.attributes).toMatchObject({
      "rpc.system.name": "grpc",
      "rpc.method": "grpc.health.v1.Health/Check",
      "rpc.status_code": "OK",
    });
    expect(clientSpan.attributes).toMatchObject({ "server.address": "127.0.0.1", "server.port": server.port });
    expect(serverSpan.spanContext().traceId).toBe(clientSpan.spanContext().traceId);
    expect(serverSpan.parentSpanContext?.spanId).toBe(clientSpan.spanContext().spanId);
  });

  it("a call its client cuts before sending its message counts as CANCELLED or DEADLINE_EXCEEDED, not as the client's protocol error", async () => {
    // A Node client's deadline of 1 ms ends the request stream without its message, then resets it.
    exporter.reset();
    const embed = createClient(EmbedService, createGrpcTransport({ baseUrl: server.url }));
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => embed.embed({ checkpoint: suite.base, texts: ["a b"], layers: [0] }, { timeoutMs: 1 })));
    expect(outcomes.every((o) => o.status === "rejected")).toBe(true);
    const embeds = () => exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER && s.name === "vaccine.v1.EmbedService/Embed");
    await vi.waitFor(() => expect(embeds()).toHaveLength(20));
    const statuses = new Set(embeds().map((s) => s.attributes["rpc.status_code"]));
    expect([...statuses].filter((s) => s !== "CANCELLED" && s !== "DEADLINE_EXCEEDED")).toEqual([]);
  });

  it("a failed call records the status name and an error status", async () => {
    exporter.reset();
    await expect(client(AlignService).listAlignJobs({ pageSize: -1 })).rejects.toThrow();
    const serverSpan = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    expect(serverSpan.attributes["rpc.status_code"]).toBe("INVALID_ARGUMENT");
    expect(serverSpan.attributes["error.type"]).toBe("INVALID_ARGUMENT");
    expect(serverSpan.status.code).toBe(SpanStatusCode.ERROR);
  });

  it("a call refused before any handler (bytes that do not decode) still has its SERVER span, in the caller's trace", async () => {
    exporter.reset();
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const c = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set("traceparent", `00-${traceId}-00f067aa0ba902b7-01`);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      c.makeUnaryRequest("/vaccine.v1.AlignService/ListAlignJobs", (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0x0a, 0xff]), metadata, (e) => resolve(e!)),
    );
    c.close();
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    const serverSpan = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    expect(serverSpan.name).toBe("vaccine.v1.AlignService/ListAlignJobs");
    expect(serverSpan.attributes).toMatchObject({ "rpc.system.name": "grpc", "rpc.status_code": "INVALID_ARGUMENT", "error.type": "INVALID_ARGUMENT" });
    expect(serverSpan.status.code).toBe(SpanStatusCode.ERROR);
    expect(serverSpan.spanContext().traceId).toBe(traceId);
    expect(serverSpan.parentSpanContext?.spanId).toBe("00f067aa0ba902b7");
  });

  it("measures each call in rpc.server.call.duration by method and status, refused calls too", async () => {
    await metricReader.forceFlush();
    metricExporter.reset();
    await client(Health).check({ service: "" });
    await expect(client(AlignService).listAlignJobs({ pageSize: -1 })).rejects.toThrow();
    const undecodable = await rawGrpc(server.url, "/vaccine.v1.AlignService/GetAlignJob", new Uint8Array([0x0a, 0xff]));
    expect(undecodable.error?.code).toBe(Code.InvalidArgument);
    await metricReader.forceFlush();
    const metric = metricExporter
      .getMetrics()
      .flatMap((m) => m.scopeMetrics.flatMap((s) => s.metrics))
      .filter((m) => m.descriptor.name === "rpc.server.call.duration")
      .at(-1)!;
    expect(metric.descriptor.unit).toBe("s");
    const points = metric.dataPoints as DataPoint<Histogram>[];
    const find = (method: string) => points.find((p) => p.attributes["rpc.method"] === method)!;
    expect(find("grpc.health.v1.Health/Check").attributes).toEqual({ "rpc.system.name": "grpc", "rpc.method": "grpc.health.v1.Health/Check", "rpc.status_code": "OK" });
    expect(find("vaccine.v1.AlignService/ListAlignJobs").attributes).toMatchObject({ "rpc.status_code": "INVALID_ARGUMENT", "error.type": "INVALID_ARGUMENT" });
    expect(find("vaccine.v1.AlignService/GetAlignJob").attributes).toMatchObject({ "rpc.status_code": "INVALID_ARGUMENT", "error.type": "INVALID_ARGUMENT" });
    for (const method of ["grpc.health.v1.Health/Check", "vaccine.v1.AlignService/ListAlignJobs", "vaccine.v1.AlignService/GetAlignJob"]) {
      expect(find(method).value.count, method).toBe(1);
      expect(find(method).value.sum, method).toBeGreaterThan(0);
      expect(find(method).value.sum, method).toBeLessThan(5);
    }
  });

  it("a streaming call's span ends when the stream ends", async () => {
    exporter.reset();
    const abort = new AbortController();
    const stream = client(Health).watch({ service: "" }, { signal: abort.signal });
    for await (const _ of stream) break;
    abort.abort();
    await new Promise((r) => setTimeout(r, 100));
    const serverSpan = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER);
    expect(serverSpan?.name).toBe("grpc.health.v1.Health/Watch");
  });
});

describe("the CLI's traces", () => {
  it("make a command one trace: its span, a CLIENT span per RPC, continued by the server", async () => {
    exporter.reset();
    const run = await vaccine(["jobs", "list", "--kind", "align", "--address", server.url], { OTEL_TRACES_EXPORTER: "console" });
    expect(run.code).toBe(0);
    // The console exporter prints each span as an object literal: its name, trace and kind.
    const spans = [...run.stdout.matchAll(/traceId: '([0-9a-f]{32})'[\s\S]*?name: '([^']+)'[\s\S]*?kind: (\d)/g)].map((m) => ({ traceId: m[1], name: m[2], kind: Number(m[3]) }));
    const command = spans.find((s) => s.name === "vaccine jobs");
    const call = spans.find((s) => s.name === "vaccine.v1.AlignService/ListAlignJobs");
    expect(call).toMatchObject({ kind: SpanKind.CLIENT, traceId: command?.traceId });
    const served = exporter.getFinishedSpans().find((s) => s.name === "vaccine.v1.AlignService/ListAlignJobs" && s.kind === SpanKind.SERVER);
    expect(served?.spanContext().traceId).toBe(command!.traceId);
    // Without an exporter the CLI prints only its own output.
    expect((await vaccine(["jobs", "list", "--kind", "align", "--address", server.url])).stdout).toBe("no jobs\n");
  });
});

describe("telemetry setup", () => {
  it("exports nothing unless the OTEL_* variables ask", () => {
    expect(exporterNames({}, "TRACES")).toEqual([]);
    expect(exporterNames({}, "METRICS")).toEqual([]);
    expect(exporterNames({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }, "TRACES")).toEqual(["otlp"]);
    expect(exporterNames({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://127.0.0.1:4318" }, "METRICS")).toEqual([]);
    expect(exporterNames({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x", OTEL_TRACES_EXPORTER: "none" }, "TRACES")).toEqual([]);
    expect(exporterNames({ OTEL_METRICS_EXPORTER: "prometheus,otlp" }, "METRICS")).toEqual(["prometheus", "otlp"]);
  });

  it("finds every OTEL_* value the SDK would fail on or misread", () => {
    expect(telemetryProblems({})).toEqual([]);
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc", OTEL_METRIC_EXPORT_INTERVAL: "1000" })).toEqual([]);
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x", OTEL_EXPORTER_OTLP_PROTOCOL: "http/proto" })).toEqual([
      'OTEL_EXPORTER_OTLP_PROTOCOL="http/proto" is invalid: expected grpc, http/protobuf, http/json',
    ]);
    expect(telemetryProblems({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "http://x", OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: "udp", OTEL_EXPORTER_OTLP_PROTOCOL: "bad" })).toEqual([
      'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="udp" is invalid: expected grpc, http/protobuf, http/json',
    ]);
    expect(telemetryProblems({ OTEL_TRACES_EXPORTER: "otlp,zipkin", OTEL_METRICS_EXPORTER: "prometheus", OTEL_EXPORTER_PROMETHEUS_PORT: "x" })).toEqual([
      'OTEL_TRACES_EXPORTER="otlp,zipkin" is invalid: expected otlp, console, none',
      'OTEL_EXPORTER_PROMETHEUS_PORT="x" is invalid: expected a port, 0 to 65535',
    ]);
    for (const interval of ["abc", "0", "-5", "1.5", "60s"]) {
      expect(telemetryProblems({ OTEL_METRICS_EXPORTER: "console", OTEL_METRIC_EXPORT_INTERVAL: interval })).toHaveLength(1);
    }
    // Unused settings are not checked: no metrics exporter reads the interval.
    expect(telemetryProblems({ OTEL_METRIC_EXPORT_INTERVAL: "abc" })).toEqual([]);
  });

  it("names the service, and OTEL_SERVICE_NAME overrides it", () => {
    const serviceName = (env: Record<string, string>) => {
      const exp = new InMemorySpanExporter();
      const t = setupTelemetry({ serviceName: "vaccine-align", env, spanProcessors: [new SimpleSpanProcessor(exp)] });
      t.tracerProvider.getTracer("t").startSpan("x").end();
      return exp.getFinishedSpans()[0].resource.attributes["service.name"];
    };
    expect(serviceName({})).toBe("vaccine-align");
    process.env.OTEL_SERVICE_NAME = "custom";
    try {
      expect(serviceName({})).toBe("custom");
    } finally {
      delete process.env.OTEL_SERVICE_NAME;
    }
  });

  it("rejects an unknown exporter with a message naming the variable", () => {
    expect(() => setupTelemetry({ serviceName: "x", env: { OTEL_TRACES_EXPORTER: "zipkin" } })).toThrow(/OTEL_TRACES_EXPORTER/);
    expect(() =>
      setupTelemetry({ serviceName: "x", env: { OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_PROTOCOL: "carrier-pigeon" } }),
    ).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL/);
  });
});
