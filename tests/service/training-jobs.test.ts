// AlignService and FineTuneService end to end over gRPC on a real server (port 0), with the
// tiny-world model as the base checkpoint and per-step spans read from an in-memory exporter.
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { clientTracing } from "../../services/platform/rpc-tracing.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { putExamples } from "../helpers/tiny-store.ts";

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
let suite: TestSuite;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let fineTune: ReturnType<typeof createClient<typeof FineTuneService>>;
const DATA = "store://datasets/tiny-align.jsonl";

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  suite = await startSuite({ tracerProvider: provider });
  await putExamples(suite.deps.store, DATA);
  const transport = createGrpcTransport({ baseUrl: suite.server.url, interceptors: [clientTracing(provider)] });
  align = createClient(AlignService, transport);
  fineTune = createClient(FineTuneService, transport);
});
afterAll(() => suite.close());

const training = { maxSteps: 6, batchSize: 3, learningRate: 0.03, maxSequenceLength: 64, checkpointEvery: 2 };
const lora = { rank: 4, alpha: 8, dropout: 0 };
async function watchAll(stream: AsyncIterable<{ event?: JobEvent }>) {
  const events: JobEvent[] = [];
  for await (const r of stream) events.push(r.event!);
  return events;
}

describe("alignment then fine-tuning over gRPC", () => {
  it("streams step events to SUCCEEDED, then fine-tunes the result, with the lineage on the job", async () => {
    const { job } = await align.createAlignJob({
      spec: { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "vaccine", value: { rho: 0.5 } }, lora, training },
    });
    expect(job!.state).toBe(JobState.QUEUED);
    const events = await watchAll(align.watchAlignJob({ jobId: job!.id }));
    const steps = events.flatMap((e) => (e.event.case === "step" ? [e.event.value] : []));
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(steps[0].perturbationNorm).toBeCloseTo(0.5, 3);
    expect(steps.every((s) => s.perturbationSeconds > 0 && s.updateSeconds > 0 && s.tokens > 0)).toBe(true);
    const written = events.flatMap((e) => (e.event.case === "checkpointWritten" ? [e.event.value.step] : []));
    expect(written).toEqual([2, 4, 6]);
    const logs = events.flatMap((e) => (e.event.case === "log" ? [e.event.value.message] : []));
    const final = Number(logs.find((m) => m.startsWith("loss of the last batch after the last update, without perturbation or dropout: "))?.split(": ")[1]);
    expect(final).toBeLessThan(steps[0].loss);
    // Every setting the job trains with, the unset ones at their defaults (weight decay 0.1, clip 1.0, seed 0).
    const settings = JSON.parse(logs.find((m) => m.startsWith("settings: "))!.slice("settings: ".length));
    expect(settings).toMatchObject({ lora: { r: 4, alpha: 8, dropout: 0 }, training: { learningRate: 0.03, batchSize: 3, weightDecay: 0.1, gradClip: 1, seed: 0 }, steps: 6 });
    expect(settings.method).toMatchObject({ rho: 0.5 });
    const aligned = (await align.getAlignJob({ jobId: job!.id })).job!;
    expect(aligned.state).toBe(JobState.SUCCEEDED);
    expect(aligned.progress).toMatchObject({ step: 6, totalSteps: 6 });
    expect(aligned.lineage.map((r) => r.uri)).toEqual([suite.base.uri, aligned.result!.uri]);

    const ft = (await fineTune.createFineTuneJob({
      spec: { alignedCheckpoint: aligned.result, dataset: { source: { case: "uri", value: DATA } }, lora, training: { ...training, maxSteps: 3 } },
    })).job!;
    const ftEvents = await watchAll(fineTune.watchFineTuneJob({ jobId: ft.id }));
    expect(ftEvents.at(-1)?.event.case).toBe("stateChange");
    const done = (await fineTune.getFineTuneJob({ jobId: ft.id })).job!;
    expect(done.state).toBe(JobState.SUCCEEDED);
    expect(done.lineage.map((r) => r.uri)).toEqual([suite.base.uri, aligned.result!.uri, done.result!.uri]);
    // The two services keep their own jobs.
    expect((await rpcFailure(() => align.getAlignJob({ jobId: ft.id }))).code).toBe(Code.NotFound);
    expect((await fineTune.listFineTuneJobs({})).jobs.map((j) => j.id)).toEqual([ft.id]);
  });

  it("traces the job: linked to the Create RPC, one span per step with perturbation and update children", async () => {
    exporter.reset();
    const { job } = await align.createAlignJob({
      spec: { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "vaccine", value: { rho: 1 } }, lora, training: { ...training, maxSteps: 2 } },
    });
    await watchAll(align.watchAlignJob({ jobId: job!.id }));
    const spans = exporter.getFinishedSpans();
    const rpc = spans.find((s) => s.name === "vaccine.v1.AlignService/CreateAlignJob" && s.kind === 1)!;
    const jobSpan = spans.find((s) => s.name === "job align")!;
    expect(jobSpan.links[0].context.spanId).toBe(rpc.spanContext().spanId);
    const steps = spans.filter((s) => s.name === "train.step");
    expect(steps).toHaveLength(2);
    for (const step of steps) {
      expect(step.parentSpanContext?.spanId).toBe(jobSpan.spanContext().spanId);
      expect(step.attributes).toMatchObject({ "vaccine.rho": 1, "vaccine.method": "vaccine" });
      expect(Number(step.attributes["vaccine.perturbation_norm"])).toBeCloseTo(1, 3);
      for (const key of ["vaccine.step", "vaccine.loss", "vaccine.grad_norm", "vaccine.learning_rate", "vaccine.tokens"]) {
        expect(step.attributes[key]).toBeTypeOf("number");
      }
      const children = spans.filter((s) => s.parentSpanContext?.spanId === step.spanContext().spanId).map((s) => s.name);
      expect(children).toEqual(["train.perturbation", "train.update"]);
    }
  });

  it("resumes a Watch from the last event seen, and refuses one past the job's last event", async () => {
    const { job } = await align.createAlignJob({ spec: { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "sft", value: {} }, lora, training: { ...training, maxSteps: 2 } } });
    const all = await watchAll(align.watchAlignJob({ jobId: job!.id }));
    const last = (await align.getAlignJob({ jobId: job!.id })).job!.lastSequence;
    expect(last).toBe(all.length);
    expect((await watchAll(align.watchAlignJob({ jobId: job!.id, afterSequence: last - 1 }))).map((e) => e.sequence)).toEqual([last]);
    expect(await watchAll(align.watchAlignJob({ jobId: job!.id, afterSequence: last }))).toEqual([]);
    const ahead = await rpcFailure(() => watchAll(align.watchAlignJob({ jobId: job!.id, afterSequence: last + 1 })));
    expect(ahead).toMatchObject({ code: Code.OutOfRange, info: { reason: "SEQUENCE_AHEAD", metadata: { field: "after_sequence", last_sequence: String(last) } } });
  });

  it("cancels a running job: CANCELLING, then CANCELLED with a google.rpc.Status", async () => {
    const { job } = await align.createAlignJob({
      spec: { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "sft", value: {} }, lora, training: { ...training, maxSteps: 500 } },
    });
    const stream = align.watchAlignJob({ jobId: job!.id });
    const states: JobState[] = [];
    for await (const { event } of stream) {
      if (event!.event.case === "step" && event!.event.value.step === 2) await align.cancelAlignJob({ jobId: job!.id });
      if (event!.event.case === "stateChange") states.push(event!.event.value.to);
    }
    expect(states).toEqual([JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING, JobState.CANCELLED]);
    const cancelled = (await align.getAlignJob({ jobId: job!.id })).job!;
    expect(cancelled.error?.code).toBe(Code.Canceled);
    expect(cancelled.progress!.step).toBeLessThan(10);
  });

  it("fails a job whose last update overflowed, instead of storing a model that answers NaN", async () => {
    // One step: its loss is measured before the update (finite); only the check after it sees the damage.
    const { job } = await align.createAlignJob({
      spec: { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "sft", value: {} }, lora, training: { ...training, maxSteps: 1, learningRate: 1e30, warmupRatio: 0 } },
    });
    await watchAll(align.watchAlignJob({ jobId: job!.id }));
    const failed = (await align.getAlignJob({ jobId: job!.id })).job!;
    expect(failed.state).toBe(JobState.FAILED);
    expect(failed.error).toMatchObject({ code: Code.FailedPrecondition, message: expect.stringContaining("the loss after the update of step 1, the last, is NaN") });
    // What to change: a smaller step (clipping gradients harder is one), never a looser clip.
    expect(failed.error?.message).toMatch(/; lower the learning rate, or grad_clip \(the gradient norm each step may have\)$/);
    expect(anyUnpack(failed.error!.details[0], ErrorInfoSchema)).toMatchObject({ reason: "LOSS_NOT_FINITE", metadata: { step: "1", loss: "NaN" } });
    expect(failed.result).toBeUndefined();
  });
});

describe("Create validation against the store", () => {
  const base = () => ({ baseCheckpoint: suite.base, dataset: { source: { case: "uri" as const, value: DATA } }, method: { case: "sft" as const, value: {} } });

  it("answers NOT_FOUND for an unknown checkpoint, naming the field", async () => {
    const e = await rpcFailure(() =>
      align.createAlignJob({ spec: { ...base(), baseCheckpoint: { uri: `store://checkpoints/${"0".repeat(64)}`, digest: `sha256:${"0".repeat(64)}` } } }),
    );
    expect(e.code).toBe(Code.NotFound);
    expect(e.info).toMatchObject({ reason: "CHECKPOINT_NOT_FOUND", metadata: { field: "spec.base_checkpoint" } });
  });

  it("answers INVALID_ARGUMENT with file and line for a malformed dataset, and for an unknown builtin", async () => {
    await suite.deps.store.putObject("store://datasets/bad.jsonl", Buffer.from(`${JSON.stringify(EXAMPLES[0])}\n{"instruction": 3}\n`));
    const e = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), dataset: { source: { case: "uri", value: "store://datasets/bad.jsonl" } } } }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info).toMatchObject({ reason: "DATASET_INVALID", metadata: { file: "store://datasets/bad.jsonl", line: "2" } });
    expect(e.message).toContain("store://datasets/bad.jsonl:2");
    const missing = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), dataset: { source: { case: "uri", value: "store://datasets/none.jsonl" } } } }));
    // Named as DatasetService names a missing dataset.
    expect(missing).toMatchObject({
      code: Code.NotFound,
      message: "dataset store://datasets/none.jsonl does not exist",
      info: { reason: "DATASET_NOT_FOUND", metadata: { field: "spec.dataset", uri: "store://datasets/none.jsonl" } },
    });
    const unknown = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), dataset: { source: { case: "builtin", value: { name: "nope" } } } } }));
    expect(unknown.info?.reason).toBe("DATASET_UNKNOWN");
    expect(unknown.badRequest?.fieldViolations[0].field).toBe("spec.dataset.builtin.name");
  });

  it("refuses data without a response token within max_sequence_length at Create, not when the job starts", async () => {
    const before = (await align.listAlignJobs({})).jobs.length;
    const e = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), training: { ...training, maxSequenceLength: 4 } } }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.info).toMatchObject({ reason: "NO_TRAINING_TOKENS", metadata: { field: "spec.training.max_sequence_length", max_sequence_length: "4" } });
    expect(e.message).toContain(`none of the ${EXAMPLES.length} examples has a response token within max_sequence_length 4`);
    expect((await align.listAlignJobs({})).jobs.length).toBe(before);
  });

  it("checks the data the job trains on: a safety mix's alignment examples can make it trainable", async () => {
    // Prompts that fill max_sequence_length 64; the refusal examples of DATA fit in it.
    const long = "store://datasets/long-prompts.jsonl";
    await suite.deps.store.putObject(long, Buffer.from(EXAMPLES.map((e) => JSON.stringify({ ...e, instruction: `${e.instruction} `.repeat(20) })).join("\n")));
    const spec = (fraction: number) => ({
      alignedCheckpoint: suite.base,
      dataset: { source: { case: "uri" as const, value: long } },
      lora,
      training: { ...training, maxSteps: 1 },
      guard: { case: "safetyMix" as const, value: { fraction, alignmentDataset: { source: { case: "uri" as const, value: DATA } } } },
    });
    expect((await rpcFailure(() => fineTune.createFineTuneJob({ spec: spec(0) }))).info?.reason).toBe("NO_TRAINING_TOKENS");
    const { job } = await fineTune.createFineTuneJob({ spec: spec(0.5) });
    await watchAll(fineTune.watchFineTuneJob({ jobId: job!.id }));
    expect((await fineTune.getFineTuneJob({ jobId: job!.id })).job!.state).toBe(JobState.SUCCEEDED);
  });

  it("refuses a LoRA rank above the model's width and an epoch count that gives too many steps, naming the fields", async () => {
    // The tiny model's hidden_size is 16; the static bound on rank alone is far higher.
    const rank = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), lora: { rank: 32 } } }));
    expect(rank.code).toBe(Code.InvalidArgument);
    expect(rank.badRequest?.fieldViolations.map((f) => f.field)).toEqual(["spec.lora.rank"]);
    expect(rank.message).toContain("hidden_size, 16");
    // 1e6 epochs of a few examples: over the bound on steps, though each field alone is within its own.
    const epochs = await rpcFailure(() => align.createAlignJob({ spec: { ...base(), training: { epochs: 1_000_000 } } }));
    expect(epochs.code).toBe(Code.InvalidArgument);
    expect(epochs.badRequest?.fieldViolations.map((f) => f.field)).toEqual(["spec.training.epochs"]);
  });

  it("screens a fine-tuning dataset with the moderation gate and refuses it above the bound", async () => {
    const spec = (threshold: number) => ({
      alignedCheckpoint: suite.base,
      dataset: { source: { case: "uri" as const, value: DATA } },
      training: { maxSteps: 1, batchSize: 3, maxSequenceLength: 64 },
      moderationGate: { enabled: true, threshold, maxFlaggedFraction: 0.5 },
    });
    // Threshold 0 flags every example: 100% > 50%.
    const e = await rpcFailure(() => fineTune.createFineTuneJob({ spec: spec(0) }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.info?.reason).toBe("TRAINING_DATA_UNSAFE");
    expect(e.info?.metadata).toMatchObject({ flagged_fraction: "1.0000", flagged: String(EXAMPLES.length), total: String(EXAMPLES.length) });
    // Threshold 1 flags nothing: the job is created.
    const { job } = await fineTune.createFineTuneJob({ spec: spec(1) });
    expect(job!.state).toBe(JobState.QUEUED);
    await watchAll(fineTune.watchFineTuneJob({ jobId: job!.id }));
  });

  it("screens a large dataset in turns: the call's deadline ends it long before the whole screening would", async () => {
    const many = Array.from({ length: 20_000 }, (_, i) => ({ ...EXAMPLES[i % EXAMPLES.length], input: `example ${i}` }));
    const uri = "store://datasets/many.jsonl";
    await suite.deps.store.putObject(uri, Buffer.from(many.map((e) => JSON.stringify(e)).join("\n")));
    const spec = { alignedCheckpoint: suite.base, dataset: { source: { case: "uri" as const, value: uri } }, moderationGate: { enabled: true, threshold: 0, maxFlaggedFraction: 0.5 } };
    let t0 = performance.now();
    expect((await rpcFailure(() => fineTune.createFineTuneJob({ spec }))).info?.reason).toBe("TRAINING_DATA_UNSAFE");
    const whole = performance.now() - t0;
    t0 = performance.now();
    const cut = await rpcFailure(() => fineTune.createFineTuneJob({ spec }, { timeoutMs: Math.round(whole / 5) }));
    const elapsed = performance.now() - t0;
    expect(cut.code).toBe(Code.DeadlineExceeded);
    // Screened in one synchronous piece, no timer could fire before the end: about `whole`.
    expect(elapsed).toBeLessThan(whole / 2);
  });

  it("refuses a training-state checkpoint as a fine-tuning parent with FAILED_PRECONDITION", async () => {
    const { job } = await align.createAlignJob({ spec: { ...base(), lora, training: { ...training, maxSteps: 3, checkpointEvery: 1 } } });
    const events = await watchAll(align.watchAlignJob({ jobId: job!.id }));
    const state = events.flatMap((e) => (e.event.case === "checkpointWritten" && e.event.value.kind === 1 ? [e.event.value.checkpoint!] : []))[0];
    const e = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { alignedCheckpoint: state, dataset: { source: { case: "uri", value: DATA } } } }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.info?.reason).toBe("CHECKPOINT_KIND_INVALID");
  });
});
