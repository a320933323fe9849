// Deletes refuse what an unfinished job uses (services/common/jobs-using.ts): its parent and its
// datasets, for a running and a queued job, on a real server (port 0) running one job at a
// time; once the jobs have ended, the same deletes go through. Then the check called directly:
// the training state a job resumes from, a method's dataset, and whose jobs count.
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService, CheckpointType } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { JobSchema, JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { assertNoJobUses } from "../../services/common/jobs-using.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { putModel } from "../helpers/tiny-store.ts";
import { tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";
import { datasetBytes, uploadAs } from "../helpers/tenants.ts";

let suite: TestSuite;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let datasets: ReturnType<typeof createClient<typeof DatasetService>>;
let checkpoints: ReturnType<typeof createClient<typeof CheckpointService>>;

beforeAll(async () => {
  suite = await startSuite();
  const transport = createGrpcTransport({ baseUrl: suite.server.url });
  align = createClient(AlignService, transport);
  datasets = createClient(DatasetService, transport);
  checkpoints = createClient(CheckpointService, transport);
});
afterAll(() => suite.close());

const spec = (base: { uri: string; digest: string }, data: string, maxSteps: number) => ({
  baseCheckpoint: base,
  dataset: { source: { case: "uri" as const, value: data } },
  method: { case: "sft" as const, value: {} },
  lora: { rank: 4, alpha: 8, dropout: 0 },
  training: { maxSteps, batchSize: 3, learningRate: 0.01, maxSequenceLength: 64, checkpointEvery: 2 },
});

async function until(id: string, done: (job: Job) => boolean): Promise<Job> {
  for (;;) {
    const { job } = await align.getAlignJob({ jobId: id });
    if (done(job!)) return job!;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("deletes of what an unfinished job uses", () => {
  it("are FAILED_PRECONDITION naming the job and its field, and go through once the jobs have ended", async () => {
    // Seed 1: a base of our own, not the shipped one (which is never deleted).
    const model = tinyWorldModel(tinyTokenizer(), 1);
    const base = await putModel(suite.deps.store, model);
    model.dispose();
    const runningData = (await uploadAs({ datasets }, datasetBytes("running"))).uri;
    const queuedData = (await uploadAs({ datasets }, datasetBytes("queued"))).uri;
    const running = (await align.createAlignJob({ spec: spec(base, runningData, 500) })).job!;
    const queued = (await align.createAlignJob({ spec: spec(base, queuedData, 2) })).job!;
    const state = (await until(running.id, (j) => j.trainingState !== undefined)).trainingState!;
    expect((await align.getAlignJob({ jobId: queued.id })).job!.state).toBe(JobState.QUEUED);

    const refused = async (call: () => Promise<unknown>, reason: string, field: string, job: Job, jobField: string, words: RegExp) => {
      const e = await rpcFailure(call);
      expect(e).toMatchObject({ code: Code.FailedPrecondition, info: { reason, metadata: { field, job_id: job.id, job_field: jobField } } });
      expect(e.message).toMatch(words);
    };
    await refused(() => checkpoints.deleteCheckpoint({ checkpoint: base }), "CHECKPOINT_IN_USE", "checkpoint", running, "spec.base_checkpoint", /\(running\): cancel the job/);
    await refused(() => datasets.deleteDataset({ uri: runningData }), "DATASET_IN_USE", "uri", running, "spec.dataset", /\(running\)/);
    await refused(() => datasets.deleteDataset({ uri: queuedData }), "DATASET_IN_USE", "uri", queued, "spec.dataset", /\(queued\)/);
    expect(await suite.deps.store.exists(base)).toBe(true);

    await align.cancelAlignJob({ jobId: queued.id });
    await align.cancelAlignJob({ jobId: running.id });
    await until(running.id, (j) => j.state === JobState.CANCELLED);
    await datasets.deleteDataset({ uri: runningData });
    await datasets.deleteDataset({ uri: queuedData });
    // The cancelled job's training states (one every 2 steps, all kept) build on the base: they go first.
    const states = (await checkpoints.listCheckpoints({ pageSize: 1000, type: CheckpointType.TRAINING_STATE })).checkpoints.filter((c) => c.jobId === running.id);
    expect(states.map((c) => c.ref!.uri)).toContain(state.uri);
    for (const c of states) await checkpoints.deleteCheckpoint({ checkpoint: c.ref });
    await checkpoints.deleteCheckpoint({ checkpoint: base });
    expect(await suite.deps.store.exists(base)).toBe(false);
  }, 60_000);
});

describe("assertNoJobUses", () => {
  const ref = (hex: string) => ({ uri: `store://checkpoints/${hex}`, digest: `sha256:${hex}` });
  const [parent, state, other] = ["a", "b", "c"].map((c) => ref(c.repeat(64)));
  const harmful = `store://datasets/${"d".repeat(64)}`;
  const job = create(JobSchema, {
    id: "align-1",
    state: JobState.RUNNING,
    tenant: "t1",
    trainingState: state,
    spec: { case: "align", value: { baseCheckpoint: parent, method: { case: "booster", value: { harmfulDataset: { source: { case: "uri", value: harmful } } } } } },
  });
  const asked: (string | undefined)[] = [];
  const deps = { jobs: { unfinished: async (tenant?: string) => (asked.push(tenant), [job]) } };

  it("finds a checkpoint as a job's training state and a dataset a method names, each with its field", async () => {
    expect(await rpcFailure(() => assertNoJobUses(deps, undefined, "checkpoints", "b".repeat(64), state.uri, "checkpoint"))).toMatchObject({
      code: Code.FailedPrecondition,
      message: `${state.uri} is the training_state of job align-1 (running): cancel the job or wait for it to end`,
      info: { reason: "CHECKPOINT_IN_USE", metadata: { field: "checkpoint", job_id: "align-1", job_field: "training_state" } },
    });
    expect(await rpcFailure(() => assertNoJobUses(deps, undefined, "datasets", "d".repeat(64), harmful, "uri"))).toMatchObject({
      info: { reason: "DATASET_IN_USE", metadata: { field: "uri", job_field: "spec.booster.harmful_dataset" } },
    });
    // A checkpoint's hex is not a dataset's, nor the other way round; what no job names is free.
    await assertNoJobUses(deps, undefined, "datasets", "b".repeat(64), harmful, "uri");
    await assertNoJobUses(deps, undefined, "checkpoints", "d".repeat(64), other.uri, "checkpoint");
    await assertNoJobUses(deps, undefined, "checkpoints", "c".repeat(64), other.uri, "checkpoint");
  });

  it("asks for the caller's tenant's jobs, every tenant's for an admin or without tenancy, and nothing without a view of the jobs", async () => {
    asked.length = 0;
    const hex = "c".repeat(64);
    await assertNoJobUses(deps, { tenant: "t2", admin: false }, "checkpoints", hex, other.uri, "checkpoint");
    await assertNoJobUses(deps, { tenant: "t2", admin: true }, "checkpoints", hex, other.uri, "checkpoint");
    await assertNoJobUses(deps, undefined, "checkpoints", hex, other.uri, "checkpoint");
    expect(asked).toEqual(["t2", undefined, undefined]);
    await assertNoJobUses({}, undefined, "checkpoints", "a".repeat(64), parent.uri, "checkpoint");
  });
});
