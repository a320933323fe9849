// Training runs in a worker thread per job, with the same results as on the serving thread; a
// job over the memory limit is refused at Create;
// a job that exhausts the wasm heap (the backend aborts) fails typed, and Embed and a small
// job succeed right after in the same process.
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { createNoopMeter, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { trainingWork } from "../../services/jobs/work.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { putExamples } from "../helpers/tiny-store.ts";

let suite: TestSuite;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let embed: ReturnType<typeof createClient<typeof EmbedService>>;
const DATA = "store://datasets/tiny-align.jsonl";
// 30 rows of about 1,200 tokens: max_sequence_length decides every batch's length (a batch
// never has more rows than the dataset).
const LONG = "store://datasets/long.jsonl";

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  await putExamples(suite.deps.store, DATA);
  const long = Array.from({ length: 32 }, () => EXAMPLES.map((e) => ({ ...e, output: Array(200).fill(e.output).join(" ") }))).flat();
  await suite.deps.store.putObject(LONG, Buffer.from(long.map((e) => JSON.stringify(e)).join("\n")));
  const transport = createGrpcTransport({ baseUrl: suite.server.url });
  align = createClient(AlignService, transport);
  embed = createClient(EmbedService, transport);
});
afterAll(() => suite.close());

const lora = { rank: 4, alpha: 8, dropout: 0 };
const spec = (dataset: string, training: Record<string, number>) => ({
  baseCheckpoint: suite.base,
  dataset: { source: { case: "uri" as const, value: dataset } },
  method: { case: "sft" as const, value: {} },
  lora,
  training: { learningRate: 0.03, checkpointEvery: 1000, ...training },
});

async function finished(id: string): Promise<Job> {
  for await (const _ of align.watchAlignJob({ jobId: id }));
  return (await align.getAlignJob({ jobId: id })).job!;
}

describe("training in a worker thread", () => {
  it("writes the same adapter bytes as the same work run on this thread", async () => {
    const { job } = await align.createAlignJob({ spec: { ...spec(DATA, { maxSteps: 3, batchSize: 3, maxSequenceLength: 64 }), method: { case: "vaccine", value: { rho: 0.5 } } } });
    const threaded = await finished(job!.id);
    expect(threaded.state).toBe(JobState.SUCCEEDED);
    const here = await trainingWork(suite.deps.store, createNoopMeter(), "align")({
      job: threaded,
      signal: new AbortController().signal,
      tracer: trace.getTracer("test"),
      emit: () => {},
      progress: () => {},
      setTrainingState: () => {},
    });
    // The manifests differ in meta (the job id); the files are content.
    const files = async (ref: { uri: string; digest: string }) => (await suite.deps.store.readManifest(ref)).files;
    expect(await files(threaded.result!)).toEqual(await files(here!.result));
  });
});

describe("job admission", () => {
  it("refuses a job over the memory limit at Create with the estimate, the limit and what to lower", async () => {
    const limit = suite.deps.jobMemoryLimitMb;
    suite.deps.jobMemoryLimitMb = 1024;
    const before = (await align.listAlignJobs({})).jobs.length;
    try {
      const e = await rpcFailure(() => align.createAlignJob({ spec: spec(LONG, { maxSteps: 1, batchSize: 24, maxSequenceLength: 1024 }) }));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.info?.reason).toBe("JOB_MEMORY_LIMIT_EXCEEDED");
      expect(e.info?.metadata.limit_mb).toBe("1024");
      expect(Number(e.info?.metadata.estimate_mb)).toBeGreaterThan(1024);
      const batch = Number(e.info?.metadata.max_batch_size);
      expect(batch).toBeGreaterThan(0);
      expect(e.message).toMatch(/lower spec\.training\.batch_size to \d+ or spec\.training\.max_sequence_length to \d+/);
      // The advice fits: the same job with the suggested batch size is accepted.
      const { job } = await align.createAlignJob({ spec: spec(LONG, { maxSteps: 1, batchSize: batch, maxSequenceLength: 1024 }) });
      expect(job!.state).toBe(JobState.QUEUED);
      await align.cancelAlignJob({ jobId: job!.id });
      await finished(job!.id);
      // The refused job does not exist; the accepted one does.
      expect((await align.listAlignJobs({})).jobs).toHaveLength(before + 1);
    } finally {
      suite.deps.jobMemoryLimitMb = limit;
    }
  });

  it("sizes RepNoise's kernel matrices by its harmful data's rows: short ones are admitted where long ones are not", async () => {
    const limit = suite.deps.jobMemoryLimitMb;
    const repnoise = (harmful: string) => ({
      ...spec(LONG, { maxSteps: 1, batchSize: 4, maxSequenceLength: 1024 }),
      method: { case: "repnoise" as const, value: { harmfulDataset: { source: { case: "uri" as const, value: harmful } } } },
    });
    try {
      // The estimates, from refusals under a limit nothing fits (the rest of the estimate
      // depends on the kernels that run).
      suite.deps.jobMemoryLimitMb = 64;
      const estimate = async (harmful: string) => Number((await rpcFailure(() => align.createAlignJob({ spec: repnoise(harmful) }))).info?.metadata.estimate_mb);
      const [short, long] = [await estimate(DATA), await estimate(LONG)];
      // Harmful rows of about 1,200 tokens, cut to 1,024: kernel matrices of (4 x 1,024)^2
      // elements, 1 GiB with the fused kernels' terms (16 floats a pair) and 3 GiB with the
      // stock ones (48); the tiny world's rows (tens of tokens): a few MiB.
      expect(long - short).toBeGreaterThan(1000);
      suite.deps.jobMemoryLimitMb = short;
      const e = await rpcFailure(() => align.createAlignJob({ spec: repnoise(LONG) }));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.message).toMatch(/repnoise/);
      const { job } = await align.createAlignJob({ spec: repnoise(DATA) });
      expect(job!.state).toBe(JobState.QUEUED);
      await align.cancelAlignJob({ jobId: job!.id });
      await finished(job!.id);
    } finally {
      suite.deps.jobMemoryLimitMb = limit;
    }
  });
});

describe("a backend abort", () => {
  it("fails only that job, typed; Embed and the next job in the same process succeed", async () => {
    // Admission would refuse it; raised so that the job reaches the backend. 256 x 1024 tokens
    // keep 2.2 GB of attention probabilities a layer (4 heads; the causal blocks, about half of
    // [t, t]) for the backward pass, past the wasm heap's 4 GiB over the model's two layers.
    // On one thread: data-parallel threads (VACCINE_TRAIN_THREADS) split it below that.
    const limit = suite.deps.jobMemoryLimitMb;
    const threads = process.env.VACCINE_TRAIN_THREADS;
    suite.deps.jobMemoryLimitMb = 1_000_000;
    process.env.VACCINE_TRAIN_THREADS = "1";
    let failed: Job;
    try {
      const { job } = await align.createAlignJob({ spec: spec(LONG, { maxSteps: 2, batchSize: 256, maxSequenceLength: 1024 }) });
      failed = await finished(job!.id);
    } finally {
      suite.deps.jobMemoryLimitMb = limit;
      if (threads === undefined) delete process.env.VACCINE_TRAIN_THREADS;
      else process.env.VACCINE_TRAIN_THREADS = threads;
    }
    expect(failed.state).toBe(JobState.FAILED);
    expect(failed.error?.code).toBe(Code.ResourceExhausted);
    const info = anyUnpack(failed.error!.details[0], ErrorInfoSchema)!;
    expect(info.reason).toBe("TRAINING_BACKEND_ABORTED");
    expect(info.metadata).toMatchObject({ batch_size: "256", max_sequence_length: "1024", lora_rank: "4" });
    // A wasm trap: which one depends on where the heap ran out (with the native kernels an
    // allocation failing inside tfjs can surface as a call through a broken function table).
    expect(info.metadata.cause).toMatch(/Aborted\(|memory access out of bounds|Invalid typed array length|Array buffer allocation failed|null function or function signature mismatch/);
    expect(failed.error!.message).toMatch(/lower spec\.training\.batch_size or spec\.training\.max_sequence_length/);

    const res = await embed.embed({ checkpoint: suite.base, texts: ["How do I break into a car?"], includeFinalHidden: true, pooling: Pooling.MEAN });
    expect(res.embeddings[0].layers.at(-1)!.vectors!.values.every(Number.isFinite)).toBe(true);
    const { job } = await align.createAlignJob({ spec: spec(DATA, { maxSteps: 2, batchSize: 3, maxSequenceLength: 64 }) });
    const next = await finished(job!.id);
    expect(next.state).toBe(JobState.SUCCEEDED);
    expect(next.progress?.step).toBe(2);
  });
});
