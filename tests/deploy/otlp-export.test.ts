// Telemetry export for real: setupTelemetry's OTLP exporters, configured by the OTEL_*
// variables as in the manifests, send a short alignment job's trace and metrics to an OTLP
// receiver inside this process, once per protocol (http/json, http/protobuf, grpc).
import http from "node:http";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import pkg from "../../package.json" with { type: "json" };
import { SECONDS_BUCKETS, setupTelemetry } from "../../services/platform/telemetry.ts";
import { TRAINING } from "../../services/jobs/telemetry.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { startSuite } from "../helpers/server.ts";
import { putExamples } from "../helpers/tiny-store.ts";

type Protocol = "http/json" | "http/protobuf" | "grpc";
type Signal = "traces" | "metrics";

/** What a receiver got, decoded to the OTLP JSON shape (ids as hex, 64-bit numbers as numbers). */
interface Received {
  traces: Otlp[];
  metrics: Otlp[];
  contentTypes: Set<string>;
}
// The decoded OTLP JSON is walked with a few loose accessors, not typed message by message.
type Otlp = Record<string, any>;

// --- A minimal OTLP protobuf decoder: only the fields asserted below, unknown ones skipped. ---
type Scalar = "string" | "bytes" | "double" | "fixed64" | "varint" | "bool";
type Schema = Record<number, [name: string, type: Scalar | Schema, repeated?: true]>;

const ANY_VALUE: Schema = { 1: ["stringValue", "string"], 2: ["boolValue", "bool"], 3: ["intValue", "varint"], 4: ["doubleValue", "double"] };
const KEY_VALUE: Schema = { 1: ["key", "string"], 2: ["value", ANY_VALUE] };
const RESOURCE: Schema = { 1: ["attributes", KEY_VALUE, true] };
const SCOPE: Schema = { 1: ["name", "string"], 2: ["version", "string"] };
const SPAN: Schema = {
  1: ["traceId", "bytes"],
  2: ["spanId", "bytes"],
  4: ["parentSpanId", "bytes"],
  5: ["name", "string"],
  6: ["kind", "varint"],
  9: ["attributes", KEY_VALUE, true],
  13: ["links", { 1: ["traceId", "bytes"], 2: ["spanId", "bytes"] }, true],
  15: ["status", { 2: ["message", "string"], 3: ["code", "varint"] }],
};
const METRIC: Schema = {
  1: ["name", "string"],
  3: ["unit", "string"],
  7: ["sum", { 1: ["dataPoints", { 7: ["attributes", KEY_VALUE, true], 4: ["asDouble", "double"], 6: ["asInt", "fixed64"] }, true] }],
  9: ["histogram", { 1: ["dataPoints", { 9: ["attributes", KEY_VALUE, true], 4: ["count", "fixed64"], 5: ["sum", "double"], 7: ["explicitBounds", "double", true] }, true] }],
};
const REQUEST: Record<Signal, Schema> = {
  traces: { 1: ["resourceSpans", { 1: ["resource", RESOURCE], 2: ["scopeSpans", { 1: ["scope", SCOPE], 2: ["spans", SPAN, true] }, true] }, true] },
  metrics: { 1: ["resourceMetrics", { 1: ["resource", RESOURCE], 2: ["scopeMetrics", { 1: ["scope", SCOPE], 2: ["metrics", METRIC, true] }, true] }, true] },
};

function decode(bytes: Uint8Array, schema: Schema): Otlp {
  const reader = new BinaryReader(bytes);
  const out: Otlp = {};
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    const field = schema[no];
    if (!field) {
      reader.skip(wireType);
      continue;
    }
    const [name, type, repeated] = field;
    if (repeated && type === "double" && wireType === WireType.LengthDelimited) {
      // A packed repeated double: its bytes hold the values back to back.
      const packed = new BinaryReader(reader.bytes());
      while (packed.pos < packed.len) (out[name] ??= []).push(packed.double());
      continue;
    }
    const value =
      typeof type === "object" ? decode(reader.bytes(), type)
      : type === "string" ? reader.string()
      : type === "bytes" ? Buffer.from(reader.bytes()).toString("hex")
      : type === "double" ? reader.double()
      : type === "fixed64" ? Number(reader.fixed64())
      : type === "bool" ? reader.bool()
      : Number(reader.int64());
    if (repeated) (out[name] ??= []).push(value);
    else out[name] = value;
  }
  return out;
}

// --- Receivers ---
const PATHS: Record<Signal, string> = { traces: "/v1/traces", metrics: "/v1/metrics" };
const GRPC_PATHS: Record<Signal, string> = {
  traces: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
  metrics: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
};

function record(received: Received, signal: Signal, body: Buffer, json: boolean): void {
  received[signal].push(json ? JSON.parse(body.toString("utf8")) : decode(body, REQUEST[signal]));
}

/** An OTLP/HTTP receiver for both encodings; answers an empty Export response. */
async function httpReceiver(received: Received): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const signal = (Object.keys(PATHS) as Signal[]).find((s) => PATHS[s] === req.url);
      const type = req.headers["content-type"] ?? "";
      if (req.method !== "POST" || !signal) return void res.writeHead(404).end();
      received.contentTypes.add(type);
      const json = type.startsWith("application/json");
      record(received, signal, Buffer.concat(chunks), json);
      res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" }).end(json ? "{}" : "");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** An OTLP/gRPC receiver: the two Export methods with raw bytes in, an empty message out. */
async function grpcReceiver(received: Received): Promise<{ url: string; close(): Promise<void> }> {
  const server = new grpc.Server();
  for (const signal of ["traces", "metrics"] as const) {
    const definition = {
      Export: {
        path: GRPC_PATHS[signal],
        requestStream: false,
        responseStream: false,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: () => Buffer.alloc(0),
        responseDeserialize: (b: Buffer) => b,
      },
    };
    server.addService(definition, {
      Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
        // grpc-js keeps content-type out of the metadata; reaching this handler means gRPC.
        received.contentTypes.add("application/grpc");
        record(received, signal, call.request, false);
        done(null, Buffer.alloc(0));
      },
    });
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.tryShutdown(() => resolve())) };
}

// --- Reading the decoded requests ---
function attributes(list: { key: string; value: Record<string, unknown> }[] = []): Record<string, unknown> {
  // OTLP JSON carries 64-bit integers as strings or numbers; compare numbers.
  return Object.fromEntries(list.map(({ key, value }) => [key, "intValue" in value ? Number(value.intValue) : Object.values(value)[0]]));
}

function spansOf(received: Received) {
  return received.traces.flatMap((req) =>
    req.resourceSpans.flatMap((rs: Otlp) =>
      rs.scopeSpans.flatMap((ss: Otlp) =>
        ss.spans.map((s: Otlp) => ({
          name: s.name as string,
          kind: Number(s.kind),
          spanId: s.spanId as string,
          traceId: s.traceId as string,
          parentSpanId: (s.parentSpanId ?? "") as string,
          links: (s.links ?? []) as { traceId: string; spanId: string }[],
          attributes: attributes(s.attributes),
          resource: attributes(rs.resource?.attributes),
        })),
      ),
    ),
  );
}

/** The last export's data points of a metric: cumulative temporality, so the last one holds the totals. */
function lastPoints(received: Received, name: string) {
  const exports: { resource: Record<string, unknown>; unit: string; points: Otlp[] }[] = received.metrics.flatMap((req) =>
    req.resourceMetrics.flatMap((rm: Otlp) =>
      rm.scopeMetrics.flatMap((sm: Otlp) =>
        sm.metrics
          .filter((m: Otlp) => m.name === name)
          .map((m: Otlp) => ({ resource: attributes(rm.resource?.attributes), unit: m.unit as string, points: (m.histogram ?? m.sum).dataPoints as Otlp[] })),
      ),
    ),
  );
  const last = exports.at(-1)!;
  return {
    ...last,
    points: last.points.map((p) => ({
      attributes: attributes(p.attributes),
      count: Number(p.count ?? 0),
      value: Number(p.asDouble ?? p.asInt ?? p.sum ?? 0),
      bounds: p.explicitBounds as number[] | undefined,
    })),
  };
}

// --- The job under test ---
const STEPS = 3;
const RHO = 0.5;
const DATA = "store://datasets/tiny-align.jsonl";
const RESOURCE_ATTRIBUTES = "k8s.pod.name=align-0,k8s.namespace.name=vaccine";

/** Runs process.env with the given OTEL_* variables for fn (the OTLP exporters read their endpoint there), then restores it. */
function withEnv<T>(vars: Record<string, string>, fn: () => T): T {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

async function exportJob(protocol: Protocol): Promise<Received> {
  const received: Received = { traces: [], metrics: [], contentTypes: new Set() };
  const receiver = protocol === "grpc" ? await grpcReceiver(received) : await httpReceiver(received);
  const env = {
    OTEL_TRACES_EXPORTER: "otlp",
    OTEL_METRICS_EXPORTER: "otlp",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    OTEL_METRIC_EXPORT_INTERVAL: "500",
    OTEL_RESOURCE_ATTRIBUTES: RESOURCE_ATTRIBUTES,
  };
  const telemetry = withEnv(env, () => setupTelemetry({ serviceName: "vaccine-align", env }));
  const suite = await startSuite({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider });
  try {
    await putExamples(suite.deps.store, DATA);
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: suite.server.url }));
    const { job } = await align.createAlignJob({
      spec: {
        baseCheckpoint: suite.base,
        dataset: { source: { case: "uri", value: DATA } },
        method: { case: "vaccine", value: { rho: RHO } },
        lora: { rank: 4, alpha: 8, dropout: 0 },
        training: { maxSteps: STEPS, batchSize: 3, learningRate: 0.03, maxSequenceLength: 64, checkpointEvery: STEPS },
      },
    });
    for await (const _ of align.watchAlignJob({ jobId: job!.id }));
    expect((await align.getAlignJob({ jobId: job!.id })).job!.state).toBe(JobState.SUCCEEDED);
  } finally {
    await suite.close();
    // Flushes the batch span processor and the metric reader to the receiver.
    await telemetry.shutdown();
    await receiver.close();
  }
  return received;
}

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
});

describe.each<[Protocol, string]>([
  ["http/json", "application/json"],
  ["http/protobuf", "application/x-protobuf"],
  ["grpc", "application/grpc"],
])("OTLP export over %s", (protocol, contentType) => {
  let received: Received;
  beforeAll(async () => {
    received = await exportJob(protocol);
  }, 60_000);

  it(`arrives as ${contentType}, with the service and pod in the resource`, () => {
    expect([...received.contentTypes].every((t) => t.startsWith(contentType))).toBe(true);
    const spans = spansOf(received);
    expect(spans.length).toBeGreaterThan(0);
    for (const { resource } of spans) {
      expect(resource).toMatchObject({
        "service.name": "vaccine-align",
        "service.version": pkg.version,
        "k8s.pod.name": "align-0",
        "k8s.namespace.name": "vaccine",
      });
    }
    expect(lastPoints(received, TRAINING.stepDuration).resource["service.name"]).toBe("vaccine-align");
  });

  it("exports the RPC span, the job trace linked to it, and a step span per step with its two passes", () => {
    const spans = spansOf(received);
    const rpc = spans.find((s) => s.name === "vaccine.v1.AlignService/CreateAlignJob");
    expect(rpc?.kind).toBe(2); // SPAN_KIND_SERVER in OTLP's numbering
    const job = spans.find((s) => s.name === "job align")!;
    expect(job.traceId).not.toBe(rpc!.traceId);
    expect(job.links).toEqual([expect.objectContaining({ traceId: rpc!.traceId, spanId: rpc!.spanId })]);
    const steps = spans.filter((s) => s.name === TRAINING.stepSpan);
    expect(steps.map((s) => s.attributes["vaccine.step"]).sort()).toEqual([1, 2, 3]);
    for (const step of steps) {
      expect(step.parentSpanId).toBe(job.spanId);
      expect(step.traceId).toBe(job.traceId);
      expect(step.attributes).toMatchObject({ "vaccine.rho": RHO, "vaccine.method": "vaccine", "vaccine.job.kind": "align" });
      expect(Number(step.attributes["vaccine.perturbation_norm"])).toBeCloseTo(RHO, 3);
      for (const key of ["vaccine.loss", "vaccine.grad_norm", "vaccine.learning_rate", "vaccine.tokens"]) {
        expect(typeof step.attributes[key]).toBe("number");
      }
      const children = spans.filter((s) => s.parentSpanId === step.spanId).map((s) => s.name);
      expect(children.sort()).toEqual([TRAINING.phaseSpan.perturbation, TRAINING.phaseSpan.update]);
    }
  });

  it("exports step and pass latency histograms and the token counter", () => {
    const step = lastPoints(received, TRAINING.stepDuration);
    expect(step.unit).toBe("s");
    expect(step.points).toEqual([
      { attributes: { "vaccine.job.kind": "align", "vaccine.method": "vaccine" }, count: STEPS, value: expect.any(Number), bounds: SECONDS_BUCKETS },
    ]);
    const passes = lastPoints(received, TRAINING.passDuration).points;
    for (const pass of ["perturbation", "update"]) {
      const point = passes.find((p) => p.attributes["vaccine.pass"] === pass);
      expect(point?.count).toBe(STEPS);
      expect(point?.bounds).toEqual(SECONDS_BUCKETS);
      expect(point!.value).toBeGreaterThan(0);
    }
    expect(lastPoints(received, TRAINING.tokens).points[0].value).toBeGreaterThan(0);
  });
});
