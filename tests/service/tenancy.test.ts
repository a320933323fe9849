// Tenancy on a real server with token authentication (docs/security.md, "Tenancy"): two
// tenants and an admin. Another tenant's jobs, datasets and checkpoints are NOT_FOUND with
// the very error of a missing one, List never shows them, a job's outputs are its tenant's,
// shared bytes survive one owner's delete, built-ins are everybody's; and the same isolation
// with the Redis queue executor.
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import { CheckpointType, ExportFormat } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import type { Dataset } from "../../gen/vaccine/v1/datasets_pb.ts";
import { JobKind, JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { claim, ownersOf, release, usageOf } from "../../services/common/ownership.ts";
import { toRpcError } from "../../services/common/runtime-errors.ts";
import { QueueExecutor } from "../../services/jobs/queue/queue-executor.ts";
import { QueueWorker } from "../../services/jobs/queue/queue-worker.ts";
import { trainingWork } from "../../services/jobs/work.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { checkpointHex } from "../../services/runtime/store/store.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { folderMessages, type Meta } from "../helpers/import-folder.ts";
import { hasRedisServer, startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { alignSpec, datasetBytes, sha256, startTenantSuite, uploadAs, type Clients, type TenantSuite } from "../helpers/tenants.ts";

/** Another tenant's resource fails exactly as a missing one: same code, reason, metadata, and message but for the name. */
async function expectHiddenLike(hidden: () => Promise<unknown>, missing: () => Promise<unknown>, names: [string, string]) {
  const h = await rpcFailure(hidden);
  const m = await rpcFailure(missing);
  expect(h.code, h.message).toBe(Code.NotFound);
  expect({ code: h.code, reason: h.info?.reason, message: h.message.replaceAll(names[0], "X"), metadata: JSON.stringify(h.info?.metadata).replaceAll(names[0], "X") }).toEqual({
    code: m.code,
    reason: m.info?.reason,
    message: m.message.replaceAll(names[1], "X"),
    metadata: JSON.stringify(m.info?.metadata).replaceAll(names[1], "X"),
  });
}

const FIXTURES = join(import.meta.dirname, "../fixtures");
const MISSING_DATASET = `store://datasets/${"0".repeat(64)}`;
const MISSING_CHECKPOINT = { uri: `store://checkpoints/${"0".repeat(64)}`, digest: `sha256:${"0".repeat(64)}` };

async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of stream) out.push(x);
  return out;
}

/** Every item of a List RPC, one per page, so that paging is checked too. */
async function listAll<T>(page: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>): Promise<T[]> {
  const out: T[] = [];
  let pageToken = "";
  do {
    const p = await page(pageToken);
    out.push(...p.items);
    pageToken = p.nextPageToken;
  } while (pageToken);
  return out;
}

const listAllJobs = (c: Clients): Promise<Job[]> =>
  listAll(async (pageToken) => {
    const p = await c.align.listAlignJobs({ pageSize: 1, pageToken });
    return { items: p.jobs, nextPageToken: p.nextPageToken };
  });
const listAllDatasets = (c: Clients): Promise<Dataset[]> =>
  listAll(async (pageToken) => {
    const p = await c.datasets.listDatasets({ pageSize: 1, pageToken });
    return { items: p.datasets, nextPageToken: p.nextPageToken };
  });

const checkpointUris = async (c: Clients) => (await c.checkpoints.listCheckpoints({ pageSize: 1000 })).checkpoints.map((x) => x.ref!.uri);

describe("tenancy with the embedded executor", () => {
  let s: TenantSuite;
  let a: Clients;
  let b: Clients;
  let admin: Clients;
  let dataA: Dataset;
  let dataB: Dataset;
  let aligned: Job;

  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    s = await startTenantSuite();
    ({ a, b, admin } = s.as);
    dataA = await uploadAs(a, datasetBytes(""), "a's data");
    dataB = await uploadAs(b, datasetBytes("", 5), "b's data");
    // One short alignment of tenant A: its outputs are A's alone.
    const { job } = await a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri) });
    await drain(a.align.watchAlignJob({ jobId: job!.id }));
    aligned = (await a.align.getAlignJob({ jobId: job!.id })).job!;
  }, 240_000);
  afterAll(() => s?.close());

  it("a job records its tenant and its outputs (result and training states) belong to it", async () => {
    expect(aligned.state).toBe(JobState.SUCCEEDED);
    expect(aligned.tenant).toBe("team-a");
    const result = aligned.result!;
    expect(await ownersOf(s.deps.store, "checkpoints", checkpointHex(result))).toEqual(["team-a"]);
    expect(aligned.trainingState?.uri).toBeTruthy();
    expect(await ownersOf(s.deps.store, "checkpoints", checkpointHex(aligned.trainingState!))).toEqual(["team-a"]);
    // A sees it with its lineage (the built-in base first); B does not see it anywhere.
    const got = (await a.checkpoints.getCheckpoint({ checkpoint: result })).checkpoint!;
    expect(got.lineage.map((r) => r.uri)).toEqual([s.base.uri, result.uri]);
    expect(await checkpointUris(a)).toContain(result.uri);
    expect(await checkpointUris(b)).not.toContain(result.uri);
    expect(await checkpointUris(b)).toContain(s.base.uri);
    expect(await checkpointUris(admin)).toContain(result.uri);
    await expectHiddenLike(() => b.checkpoints.getCheckpoint({ checkpoint: result }), () => b.checkpoints.getCheckpoint({ checkpoint: MISSING_CHECKPOINT }), [result.uri, MISSING_CHECKPOINT.uri]);
  });

  it("another tenant's checkpoint is NOT_FOUND to Export, Embed, Generate, ScoreTask and as a job input", async () => {
    const result = aligned.result!;
    const names: [string, string] = [result.uri, MISSING_CHECKPOINT.uri];
    await expectHiddenLike(
      () => drain(b.checkpoints.exportCheckpoint({ checkpoint: result, format: ExportFormat.AS_STORED })),
      () => drain(b.checkpoints.exportCheckpoint({ checkpoint: MISSING_CHECKPOINT, format: ExportFormat.AS_STORED })),
      names,
    );
    await expectHiddenLike(() => b.embed.embed({ checkpoint: result, texts: ["hi"] }), () => b.embed.embed({ checkpoint: MISSING_CHECKPOINT, texts: ["hi"] }), names);
    await expectHiddenLike(() => b.score.generate({ checkpoint: result, prompts: [{ instruction: "hi" }], maxNewTokens: 1 }), () => b.score.generate({ checkpoint: MISSING_CHECKPOINT, prompts: [{ instruction: "hi" }], maxNewTokens: 1 }), names);
    await expectHiddenLike(
      () => drain(b.score.scoreTask({ checkpoint: result, dataset: { source: { case: "builtin", value: { name: "sst2" } } }, limit: 1 })),
      () => drain(b.score.scoreTask({ checkpoint: MISSING_CHECKPOINT, dataset: { source: { case: "builtin", value: { name: "sst2" } } }, limit: 1 })),
      names,
    );
    const fineTune = (aligned: { uri: string; digest: string }) =>
      b.fineTune.createFineTuneJob({ spec: { alignedCheckpoint: aligned, dataset: { source: { case: "uri", value: dataB.uri } }, lora: { rank: 4, alpha: 8 }, training: { maxSteps: 1, batchSize: 2, maxSequenceLength: 64 } } });
    await expectHiddenLike(() => fineTune(result), () => fineTune(MISSING_CHECKPOINT), names);
    // The moderation model of a fine-tuning job's gate too.
    const gated = (moderationModel: { uri: string; digest: string }) =>
      b.fineTune.createFineTuneJob({
        spec: {
          alignedCheckpoint: s.base,
          dataset: { source: { case: "uri", value: dataB.uri } },
          lora: { rank: 4, alpha: 8 },
          training: { maxSteps: 1, batchSize: 2, maxSequenceLength: 64 },
          moderationGate: { enabled: true, moderationModel },
        },
      });
    await expectHiddenLike(() => gated(result), () => gated(MISSING_CHECKPOINT), names);
    // A can do all of it.
    expect((await a.embed.embed({ checkpoint: result, texts: ["hi"] })).embeddings).toHaveLength(1);
    expect((await drain(a.checkpoints.exportCheckpoint({ checkpoint: result, format: ExportFormat.AS_STORED }))).length).toBeGreaterThan(0);
  });

  it("GetCheckpoint's lineage leaves out what the caller cannot read", async () => {
    // A fine-tunes its aligned adapter; B comes to own the same result bytes (as if it had
    // stored identical ones), not the aligned parent in between.
    const { job } = await a.fineTune.createFineTuneJob({
      spec: { alignedCheckpoint: aligned.result, dataset: { source: { case: "uri", value: dataA.uri } }, lora: { rank: 4, alpha: 8 }, training: { maxSteps: 1, batchSize: 2, maxSequenceLength: 64 } },
    });
    await drain(a.fineTune.watchFineTuneJob({ jobId: job!.id }));
    const tuned = (await a.fineTune.getFineTuneJob({ jobId: job!.id })).job!;
    expect(tuned.state).toBe(JobState.SUCCEEDED);
    const chain = [s.base.uri, aligned.result!.uri, tuned.result!.uri];
    expect(tuned.lineage.map((r) => r.uri)).toEqual(chain);
    expect((await a.checkpoints.getCheckpoint({ checkpoint: tuned.result })).checkpoint!.lineage.map((r) => r.uri)).toEqual(chain);
    await claim(s.deps.store, "team-b", "checkpoints", checkpointHex(tuned.result!), { bytes: 1 });
    expect((await b.checkpoints.getCheckpoint({ checkpoint: tuned.result })).checkpoint!.lineage.map((r) => r.uri)).toEqual([s.base.uri, tuned.result!.uri]);
    await release(s.deps.store, "team-b", "checkpoints", checkpointHex(tuned.result!));
  }, 120_000);

  it("another tenant's dataset is NOT_FOUND to Get, Download, Delete, ScoreTask and as a job input; List shows own datasets only", async () => {
    const names: [string, string] = [dataA.uri, MISSING_DATASET];
    await expectHiddenLike(() => b.datasets.getDataset({ uri: dataA.uri }), () => b.datasets.getDataset({ uri: MISSING_DATASET }), names);
    await expectHiddenLike(() => drain(b.datasets.downloadDataset({ uri: dataA.uri })), () => drain(b.datasets.downloadDataset({ uri: MISSING_DATASET })), names);
    await expectHiddenLike(() => b.datasets.deleteDataset({ uri: dataA.uri }), () => b.datasets.deleteDataset({ uri: MISSING_DATASET }), names);
    await expectHiddenLike(
      () => drain(b.score.scoreTask({ checkpoint: s.base, dataset: { source: { case: "uri", value: dataA.uri } }, limit: 1 })),
      () => drain(b.score.scoreTask({ checkpoint: s.base, dataset: { source: { case: "uri", value: MISSING_DATASET } }, limit: 1 })),
      names,
    );
    await expectHiddenLike(() => b.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri) }), () => b.align.createAlignJob({ spec: alignSpec(s.base, MISSING_DATASET) }), names);
    // Wherever a spec names a dataset, found by type: here a fine-tuning guard's alignment data.
    const guarded = (alignmentData: string) =>
      b.fineTune.createFineTuneJob({
        spec: {
          alignedCheckpoint: s.base,
          dataset: { source: { case: "uri", value: dataB.uri } },
          lora: { rank: 4, alpha: 8 },
          training: { maxSteps: 1, batchSize: 2, maxSequenceLength: 64 },
          guard: { case: "safetyMix", value: { fraction: 0.1, alignmentDataset: { source: { case: "uri", value: alignmentData } } } },
        },
      });
    await expectHiddenLike(() => guarded(dataA.uri), () => guarded(MISSING_DATASET), names);
    expect((await rpcFailure(() => guarded(dataA.uri))).info?.metadata.field).toBe("spec.safety_mix.alignment_dataset");
    // Still A's after B's refused delete.
    expect((await a.datasets.getDataset({ uri: dataA.uri })).dataset?.displayName).toBe("a's data");
    expect((await listAllDatasets(a)).map((d) => d.uri)).toEqual([dataA.uri]);
    expect((await listAllDatasets(b)).map((d) => d.uri)).toEqual([dataB.uri]);
    expect((await listAllDatasets(admin)).map((d) => d.uri).sort()).toEqual([dataA.uri, dataB.uri].sort());
  });

  it("another tenant's job is JOB_NOT_FOUND to Get, Cancel and Watch; List pages over own jobs only; admin sees all", async () => {
    const { job: running } = await a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri, 500) });
    const { job: queued } = await b.align.createAlignJob({ spec: alignSpec(s.base, dataB.uri, 500) });
    expect(queued!.tenant).toBe("team-b");
    const unknown = `align-${randomUUID()}`;
    const names: [string, string] = [running!.id, unknown];
    await expectHiddenLike(() => b.align.getAlignJob({ jobId: running!.id }), () => b.align.getAlignJob({ jobId: unknown }), names);
    await expectHiddenLike(() => b.align.cancelAlignJob({ jobId: running!.id }), () => b.align.cancelAlignJob({ jobId: unknown }), names);
    await expectHiddenLike(() => drain(b.align.watchAlignJob({ jobId: running!.id })), () => drain(b.align.watchAlignJob({ jobId: unknown })), names);
    // Page size 1: paging filters before it pages, so every page holds one own job.
    expect((await listAllJobs(a)).map((j) => j.id)).toEqual([running!.id, aligned.id]);
    expect((await listAllJobs(b)).map((j) => j.id)).toEqual([queued!.id]);
    expect((await listAllJobs(admin)).map((j) => j.id)).toEqual([queued!.id, running!.id, aligned.id]);
    expect((await admin.align.getAlignJob({ jobId: running!.id })).job?.tenant).toBe("team-a");
    // B's cancel did nothing; its owner and the admin can cancel.
    expect((await a.align.getAlignJob({ jobId: running!.id })).job?.state).not.toBe(JobState.CANCELLED);
    await a.align.cancelAlignJob({ jobId: running!.id });
    expect((await admin.align.cancelAlignJob({ jobId: queued!.id })).job?.state).toBe(JobState.CANCELLED);
    await drain(a.align.watchAlignJob({ jobId: running!.id }));
  }, 120_000);

  it("the same bytes from both tenants: one URI, two owners; a delete by one leaves the other's", async () => {
    const bytes = datasetBytes("", 3);
    const fromA = await uploadAs(a, bytes, "a's name");
    const fromB = await uploadAs(b, bytes, "b's name");
    expect(fromB.uri).toBe(fromA.uri);
    // Each owner sees its own upload's name and time, never the other's.
    expect(fromB.displayName).toBe("b's name");
    expect((await b.datasets.getDataset({ uri: fromA.uri })).dataset?.displayName).toBe("b's name");
    expect((await a.datasets.getDataset({ uri: fromA.uri })).dataset?.displayName).toBe("a's name");
    expect((await listAllDatasets(b)).find((d) => d.uri === fromA.uri)?.displayName).toBe("b's name");
    expect(fromB.createTime!.seconds * 1000n + BigInt(Math.floor(fromB.createTime!.nanos / 1e6))).toBeGreaterThanOrEqual(
      fromA.createTime!.seconds * 1000n + BigInt(Math.floor(fromA.createTime!.nanos / 1e6)),
    );
    expect(fromA.uri).toBe(`store://datasets/${sha256(bytes)}`);
    expect((await ownersOf(s.deps.store, "datasets", sha256(bytes))).sort()).toEqual(["team-a", "team-b"]);
    const before = await usageOf(s.deps.store, "team-a");
    await a.datasets.deleteDataset({ uri: fromA.uri });
    expect(await usageOf(s.deps.store, "team-a")).toBe(before - bytes.length);
    await expectHiddenLike(() => a.datasets.getDataset({ uri: fromA.uri }), () => a.datasets.getDataset({ uri: MISSING_DATASET }), [fromA.uri, MISSING_DATASET]);
    const downloaded = Buffer.concat((await drain(b.datasets.downloadDataset({ uri: fromA.uri }))).map((r) => r.chunk));
    expect(downloaded.equals(bytes)).toBe(true);
    // The last owner's delete removes the bytes and the record.
    await b.datasets.deleteDataset({ uri: fromA.uri });
    const left = (await s.deps.store.listObjects("store://datasets")).map((o) => o.uri);
    expect(left).not.toContain(fromA.uri);
    expect(await ownersOf(s.deps.store, "datasets", sha256(bytes))).toEqual([]);
    await expectHiddenLike(() => admin.datasets.getDataset({ uri: fromA.uri }), () => admin.datasets.getDataset({ uri: MISSING_DATASET }), [fromA.uri, MISSING_DATASET]);
  });

  it("a delete of a shared checkpoint never counts, nor waits for, what another tenant built on it", async () => {
    const importAs = (c: Clients, dir: string, m: Meta) => c.checkpoints.importCheckpoint(folderMessages(join(FIXTURES, dir), m));
    const model = { type: CheckpointType.BASE_MODEL, displayName: "shared model" };
    const fromA = (await importAs(a, "llama-f32-gqa", model)).checkpoint!.ref!;
    expect((await importAs(b, "llama-f32-gqa", model)).checkpoint!.ref).toEqual(fromA);
    const adapterOfB = (await importAs(b, "adapter-f32-gqa", { type: CheckpointType.ADAPTER, base: fromA, displayName: "b's adapter" })).checkpoint!.ref!;
    // B's own adapter over the model stops B's delete, counted to B.
    const refused = await rpcFailure(() => b.checkpoints.deleteCheckpoint({ checkpoint: fromA }));
    expect(refused).toMatchObject({ code: Code.FailedPrecondition, info: { reason: "CHECKPOINT_IN_USE", metadata: { children: "1" } } });
    // A's delete goes through: A learns nothing of B's adapter, and no longer owns the model.
    await a.checkpoints.deleteCheckpoint({ checkpoint: fromA });
    expect(await ownersOf(s.deps.store, "checkpoints", checkpointHex(fromA))).toEqual(["team-b"]);
    await expectHiddenLike(() => a.checkpoints.getCheckpoint({ checkpoint: fromA }), () => a.checkpoints.getCheckpoint({ checkpoint: MISSING_CHECKPOINT }), [fromA.uri, MISSING_CHECKPOINT.uri]);
    // A owns it again and B's ownership is gone, its adapter kept (a state the rule above no
    // longer lets B reach, but an older store may hold): A is the last owner, and its delete
    // releases it without a word of the adapter, whose files stay for B.
    await importAs(a, "llama-f32-gqa", model);
    await release(s.deps.store, "team-b", "checkpoints", checkpointHex(fromA));
    await a.checkpoints.deleteCheckpoint({ checkpoint: fromA });
    expect(await ownersOf(s.deps.store, "checkpoints", checkpointHex(fromA))).toEqual([]);
    expect(await s.deps.store.exists(fromA)).toBe(true);
    expect((await b.embed.embed({ checkpoint: adapterOfB, texts: ["hello"] })).embeddings).toHaveLength(1);
    // B's adapter gone, an admin's delete of the model removes the files.
    await b.checkpoints.deleteCheckpoint({ checkpoint: adapterOfB });
    await admin.checkpoints.deleteCheckpoint({ checkpoint: fromA });
    expect(await s.deps.store.exists(fromA)).toBe(false);
  });

  it("built-in checkpoints are readable by every tenant and no RPC deletes them", async () => {
    for (const c of [a, b]) {
      expect((await c.checkpoints.getCheckpoint({ checkpoint: s.base })).checkpoint?.ref?.uri).toBe(s.base.uri);
      expect((await c.embed.embed({ checkpoint: s.base, texts: ["hi"] })).embeddings).toHaveLength(1);
    }
    // DeleteDataset is the only delete; a checkpoint URI is not a dataset it takes.
    const e = await rpcFailure(() => a.datasets.deleteDataset({ uri: s.base.uri }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect((await b.checkpoints.getCheckpoint({ checkpoint: s.base })).checkpoint).toBeDefined();
  });
});

describe.skipIf(!hasRedisServer())("tenancy with the Redis queue executor", () => {
  let redis: TestRedis;
  let s: TenantSuite;
  let dataA: Dataset;
  let dataB: Dataset;
  const prefix = `t${randomUUID().slice(0, 8)}`;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    redis = await startRedis();
    // An api process: jobs are queued in Redis and stay QUEUED until a worker starts (the last test).
    s = await startTenantSuite({ executor: async () => new QueueExecutor({ url: redis.url, prefix }) });
    dataA = await uploadAs(s.as.a, datasetBytes(""));
    dataB = await uploadAs(s.as.b, datasetBytes("", 5));
  }, 60_000);
  afterAll(async () => {
    await s?.close();
    await redis?.stop();
  });

  it("Get, Cancel and Watch of another tenant's job are JOB_NOT_FOUND; List pages over own jobs only", async () => {
    const { a, b, admin } = s.as;
    const ownA: string[] = [];
    for (let i = 0; i < 3; i++) ownA.unshift((await a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri) })).job!.id);
    const ownB = (await b.align.createAlignJob({ spec: alignSpec(s.base, dataB.uri) })).job!;
    expect(ownB.tenant).toBe("team-b");
    const unknown = `align-${randomUUID()}`;
    const names: [string, string] = [ownA[0], unknown];
    await expectHiddenLike(() => b.align.getAlignJob({ jobId: ownA[0] }), () => b.align.getAlignJob({ jobId: unknown }), names);
    await expectHiddenLike(() => b.align.cancelAlignJob({ jobId: ownA[0] }), () => b.align.cancelAlignJob({ jobId: unknown }), names);
    await expectHiddenLike(() => drain(b.align.watchAlignJob({ jobId: ownA[0] })), () => drain(b.align.watchAlignJob({ jobId: unknown })), names);
    // Ids that name the job's other Redis keys ("<id>:events" is its event stream) are as unknown as any (were UNAVAILABLE: WRONGTYPE).
    for (const bad of [`${ownA[0]}:events`, `${ownA[0]}:lock`]) {
      for (const call of [() => a.align.getAlignJob({ jobId: bad }), () => a.align.cancelAlignJob({ jobId: bad }), () => drain(a.align.watchAlignJob({ jobId: bad }))]) {
        expect(await rpcFailure(call)).toMatchObject({ code: Code.NotFound, info: { reason: "JOB_NOT_FOUND" } });
      }
    }
    expect((await listAllJobs(a)).map((j) => j.id)).toEqual(ownA);
    expect((await listAllJobs(b)).map((j) => j.id)).toEqual([ownB.id]);
    expect((await listAllJobs(admin)).map((j) => j.id)).toEqual([ownB.id, ...ownA]);
    expect((await a.align.getAlignJob({ jobId: ownA[0] })).job?.state).toBe(JobState.QUEUED);
    expect((await a.align.cancelAlignJob({ jobId: ownA[0] })).job?.state).toBe(JobState.CANCELLED);
    // The job quota counts each tenant's jobs not final: A has two, B one.
    s.deps.quotas = { jobs: 2, storedBytes: 0 };
    try {
      await expect(a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri) })).rejects.toMatchObject({ code: Code.ResourceExhausted });
      const secondB = (await b.align.createAlignJob({ spec: alignSpec(s.base, dataB.uri) })).job!;
      for (const id of ownA.slice(1)) await a.align.cancelAlignJob({ jobId: id });
      for (const id of [ownB.id, secondB.id]) await b.align.cancelAlignJob({ jobId: id });
      const freed = (await a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri) })).job!;
      await a.align.cancelAlignJob({ jobId: freed.id });
    } finally {
      s.deps.quotas = undefined;
    }
  }, 60_000);

  it("a queue worker's outputs belong to the job's tenant", async () => {
    const { a, b } = s.as;
    // The work function both executors run (in a worker thread in a real process).
    const worker = new QueueWorker({ url: redis.url, prefix, work: { [JobKind.ALIGN]: trainingWork(s.deps.store, s.deps.meter, "align") }, mapError: (err) => toRpcError(err), pollMs: 100 });
    worker.start();
    try {
      const { job } = await a.align.createAlignJob({ spec: alignSpec(s.base, dataA.uri, 2) });
      const events = await drain(a.align.watchAlignJob({ jobId: job!.id }));
      const done = (await a.align.getAlignJob({ jobId: job!.id })).job!;
      expect(done.state).toBe(JobState.SUCCEEDED);
      // Every checkpoint it wrote (training states and the result) is A's alone.
      const written = events.flatMap((r) => (r.event?.event.case === "checkpointWritten" ? [r.event.event.value.checkpoint!] : []));
      expect(written.map((c) => c.uri)).toContain(done.result!.uri);
      expect(written.length).toBeGreaterThan(1);
      for (const c of written) expect(await ownersOf(s.deps.store, "checkpoints", checkpointHex(c))).toEqual(["team-a"]);
      await expectHiddenLike(() => b.checkpoints.getCheckpoint({ checkpoint: done.result }), () => b.checkpoints.getCheckpoint({ checkpoint: MISSING_CHECKPOINT }), [done.result!.uri, MISSING_CHECKPOINT.uri]);
    } finally {
      await worker.shutdown();
    }
  }, 120_000);
});
