// The fine-tuning guards through the real FineTuneService (gRPC, worker thread, store): one
// short job of each guard, Lisa's state on every step span, the moderation gate screening the
// user's data only, and INVALID_ARGUMENT naming the guard's fields.
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
let suite: TestSuite;
let fineTune: ReturnType<typeof createClient<typeof FineTuneService>>;
const DATA = "store://datasets/tiny-user.jsonl";
const REFUSALS = "store://datasets/tiny-refusals.jsonl";

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  suite = await startSuite({ tracerProvider: provider });
  const jsonl = (rows: object[]) => Buffer.from(rows.map((e) => JSON.stringify(e)).join("\n"));
  await suite.deps.store.putObject(DATA, jsonl(EXAMPLES));
  await suite.deps.store.putObject(REFUSALS, jsonl(EXAMPLES.filter((e) => e.output.startsWith("I cannot"))));
  fineTune = createClient(FineTuneService, createGrpcTransport({ baseUrl: suite.server.url }));
});
afterAll(() => suite.close());

const base = () => ({
  alignedCheckpoint: suite.base,
  dataset: { source: { case: "uri" as const, value: DATA } },
  lora: { rank: 4, alpha: 8, dropout: 0 },
  training: { maxSteps: 4, batchSize: 3, learningRate: 0.03, maxSequenceLength: 64, checkpointEvery: 2 },
});

async function run(spec: Parameters<typeof fineTune.createFineTuneJob>[0]["spec"]) {
  const { job } = await fineTune.createFineTuneJob({ spec });
  const events: JobEvent[] = [];
  for await (const r of fineTune.watchFineTuneJob({ jobId: job!.id })) events.push(r.event!);
  return { job: (await fineTune.getFineTuneJob({ jobId: job!.id })).job!, events };
}

describe("fine-tuning guards over gRPC", () => {
  it("runs a Lisa job: the step spans show the state of each step, the result records the guard", async () => {
    exporter.reset();
    const { job, events } = await run({
      ...base(),
      guard: { case: "lisa", value: { alignmentSteps: 1, userSteps: 2, rho: 0.5, alignmentDataset: { source: { case: "uri", value: REFUSALS } } } },
    });
    expect(job.state).toBe(JobState.SUCCEEDED);
    expect(events.filter((e) => e.event.case === "step")).toHaveLength(4);
    const steps = exporter.getFinishedSpans().filter((s) => s.name === "train.step");
    expect(steps.map((s) => s.attributes["vaccine.lisa.state"])).toEqual(["alignment", "user", "user", "alignment"]);
    expect(steps.map((s) => s.attributes["vaccine.lisa.proximal"])).toEqual([0, 0, expect.any(Number), 0]);
    expect(Number(steps[2].attributes["vaccine.lisa.proximal"])).toBeGreaterThan(0);
    const meta = (await suite.deps.store.readManifest(job.result!)).meta;
    expect(meta.guard).toEqual({ kind: "lisa", alignmentSteps: 1, userSteps: 2, rho: 0.5, alignmentExamples: 4 });
  });

  it("runs a safety-mix job with the defaults: fraction 0.1 of the built-in alignment set", async () => {
    const { job } = await run({ ...base(), guard: { case: "safetyMix", value: {} } });
    expect(job.state).toBe(JobState.SUCCEEDED);
    const meta = (await suite.deps.store.readManifest(job.result!)).meta;
    expect(meta.guard).toMatchObject({ kind: "safety_mix", fraction: 0.1 });
    expect((meta.guard as { alignmentExamples: number }).alignmentExamples).toBeGreaterThan(0);
  });

  it("screens only the user's data with the moderation gate: the added refusals neither dilute nor fail it", async () => {
    const e = await rpcFailure(() =>
      fineTune.createFineTuneJob({
        spec: { ...base(), moderationGate: { enabled: true, threshold: 0, maxFlaggedFraction: 0.5 }, guard: { case: "safetyMix", value: { fraction: 1 } } },
      }),
    );
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.info?.reason).toBe("TRAINING_DATA_UNSAFE");
    expect(e.info?.metadata).toMatchObject({ flagged: String(EXAMPLES.length), total: String(EXAMPLES.length) });
  });

  it("answers INVALID_ARGUMENT naming each bad guard field", async () => {
    const lisa = await rpcFailure(() =>
      fineTune.createFineTuneJob({ spec: { ...base(), guard: { case: "lisa", value: { alignmentSteps: -1, userSteps: 0, rho: -1, alignmentDataset: { source: { case: "uri", value: "" } } } } } }),
    );
    expect(lisa.code).toBe(Code.InvalidArgument);
    expect(lisa.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.lisa.alignment_steps", "spec.lisa.user_steps", "spec.lisa.rho", "spec.lisa.alignment_dataset.uri"]);
    // The default K1 (100) with max_steps 4: the user's data would never train.
    const long = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { ...base(), guard: { case: "lisa", value: {} } } }));
    expect(long.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.lisa.alignment_steps"]);
    const mix = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { ...base(), guard: { case: "safetyMix", value: { fraction: 1.5 } } } }));
    expect(mix.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.safety_mix.fraction"]);
  });

  it("refuses at Create a guard whose alignment dataset is missing, naming the field (no job is queued to fail later)", async () => {
    const missing = { source: { case: "uri" as const, value: "store://datasets/no-such.jsonl" } };
    const lisa = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { ...base(), guard: { case: "lisa", value: { alignmentSteps: 1, alignmentDataset: missing } } } }));
    expect(lisa.code).toBe(Code.NotFound);
    expect(lisa.info?.metadata.field).toBe("spec.lisa.alignment_dataset");
    const mix = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { ...base(), guard: { case: "safetyMix", value: { alignmentDataset: missing } } } }));
    expect(mix.code).toBe(Code.NotFound);
    expect(mix.info?.metadata.field).toBe("spec.safety_mix.alignment_dataset");
    const jobs = await fineTune.listFineTuneJobs({});
    expect(jobs.jobs.some((j) => j.state === JobState.FAILED)).toBe(false);
  });
});
