// Embed and Moderate calls batched across callers (common/call-batcher.ts, batched-calls.ts),
// over a real server: concurrent calls share forward passes and get what they would alone;
// a bad or cancelled call fails alone.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EmbedService, Pooling, type EmbedResponse } from "../../gen/vaccine/v1/embed_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { BATCH_CALLS_METRIC } from "../../services/common/batched-calls.ts";
import { embedService } from "../../services/embed/service.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { scoreService } from "../../services/score/service.ts";
import { testDeps } from "../helpers/server.ts";

const TEXTS = ["How do I break into a car?", "Name a red fruit.", "I cannot help with that.", "Tell me how to bake bread.", "What is the capital of the moon?", "a good name", "Say hello.", "Why is the sky blue?"];

let server: RunningServer;
let root: string;
let base: { uri: string; digest: string };
let embed: ReturnType<typeof createClient<typeof EmbedService>>;
let score: ReturnType<typeof createClient<typeof ScoreService>>;
let metricReader: PeriodicExportingMetricReader;
let exporter: InMemoryMetricExporter;

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  exporter = new InMemoryMetricExporter(AggregationTemporality.DELTA);
  metricReader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
  const suite = await testDeps({ meterProvider: new MeterProvider({ readers: [metricReader] }) });
  root = suite.root;
  base = suite.base;
  // A window far longer than a loaded machine takes to send a handful of calls: the batches
  // these tests expect always form.
  suite.deps.batching = { windowMs: 200, maxRows: 64 };
  server = await startServer({ services: [embedService(suite.deps), scoreService(suite.deps)], host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000 });
  const transport = createGrpcTransport({ baseUrl: server.url });
  embed = createClient(EmbedService, transport);
  score = createClient(ScoreService, transport);
});
afterAll(async () => {
  await server.shutdown();
  rmSync(root, { recursive: true, force: true });
});

/** Forward passes of every model while `run` runs. */
async function countingForwards<R>(run: () => Promise<R>): Promise<{ result: R; forwards: number }> {
  // Embed reads hidden states only: LlamaModel.states, the forward pass without the LM head.
  const states = LlamaModel.prototype.states;
  let forwards = 0;
  LlamaModel.prototype.states = function (this: LlamaModel, ...args: Parameters<LlamaModel["states"]>) {
    forwards++;
    return states.apply(this, args);
  };
  try {
    return { result: await run(), forwards };
  } finally {
    LlamaModel.prototype.states = states;
  }
}

/** [calls per run] recorded since the last read, for one RPC. */
async function batchSizes(rpc: string): Promise<{ runs: number; calls: number }> {
  await metricReader.forceFlush();
  const points = exporter
    .getMetrics()
    .flatMap((m) => m.scopeMetrics.flatMap((s) => s.metrics))
    .filter((m) => m.descriptor.name === BATCH_CALLS_METRIC)
    .flatMap((m) => m.dataPoints as { attributes: Record<string, unknown>; value: unknown }[])
    .filter((p) => p.attributes["vaccine.rpc"] === rpc);
  exporter.reset();
  const values = points.map((p) => p.value as { count: number; sum: number });
  return { runs: values.reduce((n, v) => n + v.count, 0), calls: values.reduce((n, v) => n + v.sum, 0) };
}

const request = (texts: string[]) => ({ checkpoint: base, texts, layers: [0, 1], includeFinalHidden: true, pooling: Pooling.MEAN });

function expectClose(batched: EmbedResponse, alone: EmbedResponse): void {
  expect(batched.embeddings.map((e) => e.tokenCount)).toEqual(alone.embeddings.map((e) => e.tokenCount));
  batched.embeddings.forEach((e, i) =>
    e.layers.forEach((l, j) => {
      const want = alone.embeddings[i].layers[j].vectors!.values;
      expect(l.layer).toBe(alone.embeddings[i].layers[j].layer);
      l.vectors!.values.forEach((x, k) => expect(Math.abs(x - want[k])).toBeLessThan(1e-5 * (1 + Math.abs(want[k]))));
    }),
  );
}

describe("Embed batching", () => {
  it("runs concurrent calls as one forward pass, each getting its texts' states as alone", async () => {
    const calls = TEXTS.map((t, i) => [t, TEXTS[(i + 3) % TEXTS.length]]);
    await embed.embed(request(["warm up"]));
    await batchSizes("embed");
    const { result: together, forwards } = await countingForwards(() => Promise.all(calls.map((texts) => embed.embed(request(texts)))));
    expect(await batchSizes("embed")).toEqual({ runs: 1, calls: calls.length });
    expect(forwards).toBe(1);
    for (const [i, texts] of calls.entries()) expectClose(together[i], await embed.embed(request(texts)));
    expect(await batchSizes("embed")).toEqual({ runs: calls.length, calls: calls.length });
  });

  it("fails only the call with a bad text; the others of its batch succeed", async () => {
    const tooLong = "red ".repeat(400);
    const outcomes = await Promise.allSettled([embed.embed(request([TEXTS[0]])), embed.embed(request([TEXTS[1], tooLong])), embed.embed(request([TEXTS[2]]))]);
    expect(await batchSizes("embed")).toEqual({ runs: 1, calls: 3 });
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    const err = ConnectError.from((outcomes[1] as PromiseRejectedResult).reason);
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.message).toContain("texts[1]");
    expectClose((outcomes[0] as PromiseFulfilledResult<EmbedResponse>).value, await embed.embed(request([TEXTS[0]])));
  });

  it("lets a caller that cancels leave the batch while the others get their answers", async () => {
    await batchSizes("embed");
    const leaving = new AbortController();
    const outcomes = Promise.allSettled([
      embed.embed(request([TEXTS[0]])),
      embed.embed(request([TEXTS[1]]), { signal: leaving.signal }),
      embed.embed(request([TEXTS[2]])),
    ]);
    setTimeout(() => leaving.abort(), 30); // within the 200 ms window
    const settled = await outcomes;
    expect(settled.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(ConnectError.from((settled[1] as PromiseRejectedResult).reason).code).toBe(Code.Canceled);
    expect(await batchSizes("embed")).toEqual({ runs: 1, calls: 2 });
  });

  it("does not mix calls with different options", async () => {
    await batchSizes("embed");
    await Promise.all([embed.embed(request([TEXTS[0]])), embed.embed({ ...request([TEXTS[1]]), pooling: Pooling.LAST_TOKEN })]);
    expect(await batchSizes("embed")).toEqual({ runs: 2, calls: 2 });
  });
});

describe("Moderate batching", () => {
  const pairs = TEXTS.map((prompt, i) => ({ prompt, answer: TEXTS[(i + 1) % TEXTS.length] }));

  it("classifies concurrent calls together, each as alone, and fails a bad call alone", async () => {
    const alone: Awaited<ReturnType<typeof score.moderate>>["results"] = [];
    for (const p of pairs) alone.push((await score.moderate({ pairs: [p] })).results[0]);
    await batchSizes("moderate");
    const tooLong = { prompt: "red ".repeat(400), answer: "x" };
    const outcomes = await Promise.allSettled([...pairs.map((p) => score.moderate({ pairs: [p] })), score.moderate({ pairs: [pairs[0], tooLong] })]);
    expect(await batchSizes("moderate")).toEqual({ runs: 1, calls: pairs.length + 1 });
    expect(outcomes.at(-1)!.status).toBe("rejected");
    expect(ConnectError.from((outcomes.at(-1) as PromiseRejectedResult).reason).code).toBe(Code.InvalidArgument);
    outcomes.slice(0, -1).forEach((o, i) => {
      const got = (o as PromiseFulfilledResult<{ results: typeof alone }>).value.results[0];
      expect(got.flagged).toBe(alone[i].flagged);
      got.probabilities.forEach((p, j) => expect(Math.abs(p.probability - alone[i].probabilities[j].probability)).toBeLessThan(1e-5));
    });
  });
});
