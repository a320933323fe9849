// Per-tenant quotas on a real server with token authentication (docs/security.md, "Quotas"):
// jobs queued or running, and bytes stored; each refusal is RESOURCE_EXHAUSTED with a
// google.rpc.QuotaFailure and an ErrorInfo naming the limit, and stores nothing.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema, QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { CheckpointType, type ImportCheckpointRequest } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { UploadDatasetRequestSchema } from "../../gen/vaccine/v1/datasets_pb.ts";
import { CheckpointKind, JobState, LogSeverity, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { checkpointRefOf } from "../../services/common/refs.ts";
import { checkpointBytes, usageAndLargest, usageOf } from "../../services/common/ownership.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { createdWithinJobQuota, rpcFailure } from "../helpers/errors.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { filesOf, folderMessages } from "../helpers/import-folder.ts";
import { alignSpec, datasetBytes, sha256, startTenantSuite, uploadAs, type TenantSuite } from "../helpers/tenants.ts";

let s: TenantSuite;
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  s = await startTenantSuite({ quotas: { jobs: 2, storedBytes: 0 } });
}, 60_000);
afterAll(() => s?.close());

/** The refusal's QuotaFailure and ErrorInfo, decoded. */
async function quotaFailure(call: () => Promise<unknown>) {
  const err = await call().then(
    () => {
      throw new Error("expected a quota refusal");
    },
    (e: unknown) => ConnectError.from(e),
  );
  expect(err.code).toBe(Code.ResourceExhausted);
  return { message: err.rawMessage, quota: err.findDetails(QuotaFailureSchema)[0], info: err.findDetails(ErrorInfoSchema)[0] };
}

const storedDatasets = async () => (await s.deps.store.listObjects("store://datasets")).map((o) => o.uri);

describe("per-tenant quotas", () => {
  it("refuses a job over the tenant's job quota with QuotaFailure; other tenants and a freed slot are not refused", async () => {
    const { a, b } = s.as;
    const data = await uploadAs(a, datasetBytes(""));
    const dataB = await uploadAs(b, datasetBytes(""));
    const running = (await a.align.createAlignJob({ spec: alignSpec(s.base, data.uri, 500) })).job!;
    const queued = (await a.align.createAlignJob({ spec: alignSpec(s.base, data.uri, 500) })).job!;
    const refused = await quotaFailure(() => a.align.createAlignJob({ spec: alignSpec(s.base, data.uri) }));
    expect(refused.info).toMatchObject({ reason: "QUOTA_EXCEEDED", metadata: { tenant: "team-a", limit: "VACCINE_QUOTA_JOBS", value: "2" } });
    expect(refused.quota.violations).toHaveLength(1);
    expect(refused.quota.violations[0]).toMatchObject({ subject: "tenant:team-a", quotaMetric: "jobs", quotaValue: 2n });
    expect(refused.quota.violations[0].description).toContain("VACCINE_QUOTA_JOBS is 2");
    // Counted per tenant: B has none running.
    const other = (await b.align.createAlignJob({ spec: alignSpec(s.base, dataB.uri, 500) })).job!;
    // A cancelled job no longer counts.
    expect((await a.align.cancelAlignJob({ jobId: queued.id })).job?.state).toBe(JobState.CANCELLED);
    const again = (await a.align.createAlignJob({ spec: alignSpec(s.base, data.uri, 500) })).job!;
    for (const [c, id] of [[a, again.id], [b, other.id], [a, running.id]] as const) await c.align.cancelAlignJob({ jobId: id });
    // Settled: the training states it wrote are A's, and charged (the next test starts from there).
    for await (const _ of a.align.watchAlignJob({ jobId: running.id }));
    await a.datasets.deleteDataset({ uri: data.uri });
    await b.datasets.deleteDataset({ uri: dataB.uri });
  }, 120_000);

  it("refuses an upload over the byte quota without storing it, refuses jobs at the quota, and accepts again after a delete", async () => {
    const { a, b } = s.as;
    const first = datasetBytes("", 6);
    const second = datasetBytes("", 5);
    // What A's cancelled job wrote (training states) is charged to A already.
    const start = await usageOf(s.deps.store, "team-a");
    s.deps.quotas = { jobs: 0, storedBytes: start + first.length + second.length - 1 };
    const d1 = await uploadAs(a, first);
    expect(await usageOf(s.deps.store, "team-a")).toBe(start + first.length);
    const refused = await quotaFailure(() => uploadAs(a, second));
    const limit = String(start + first.length + second.length - 1);
    expect(refused.info).toMatchObject({ reason: "QUOTA_EXCEEDED", metadata: { tenant: "team-a", limit: "VACCINE_QUOTA_STORED_BYTES", value: limit } });
    expect(refused.quota.violations[0]).toMatchObject({ subject: "tenant:team-a", quotaMetric: "storedBytes", quotaValue: BigInt(limit) });
    expect(refused.quota.violations[0].description).toContain(`VACCINE_QUOTA_STORED_BYTES is ${limit}`);
    expect(refused.message).toContain(`stores ${start + first.length} bytes and this adds ${second.length}`);
    // Nothing of the refused upload is stored or visible.
    expect(await storedDatasets()).not.toContain(`store://datasets/${sha256(second)}`);
    expect((await a.datasets.listDatasets({})).datasets.map((d) => d.uri)).toEqual([d1.uri]);
    // Another tenant's usage is its own.
    const d2b = await uploadAs(b, second);

    // At the quota exactly: no new job (its outputs would go over).
    s.deps.quotas = { jobs: 0, storedBytes: start + first.length };
    const atQuota = await quotaFailure(() => a.align.createAlignJob({ spec: alignSpec(s.base, d1.uri) }));
    expect(atQuota.info?.metadata).toMatchObject({ limit: "VACCINE_QUOTA_STORED_BYTES", value: String(start + first.length) });

    // A delete lowers the usage: the upload goes through.
    s.deps.quotas = { jobs: 0, storedBytes: start + first.length + second.length - 1 };
    await a.datasets.deleteDataset({ uri: d1.uri });
    expect(await usageOf(s.deps.store, "team-a")).toBe(start);
    const d2 = await uploadAs(a, second);
    expect(d2.uri).toBe(d2b.uri);
    expect(await usageOf(s.deps.store, "team-a")).toBe(start + second.length);
  });

  it("a job at or over the byte quota writes no more periodic training states, says so once, and finishes", async () => {
    const { a } = s.as;
    s.deps.quotas = { jobs: 0, storedBytes: 0 };
    // Two datasets: the same run again would write the same states, stored and charged once.
    const [data, other] = [await uploadAs(a, datasetBytes("states", 6)), await uploadAs(a, datasetBytes("states", 5))];
    const statesOf = (events: JobEvent[]) => events.filter((e) => e.event.case === "checkpointWritten" && e.event.value.kind === CheckpointKind.TRAINING_STATE);
    const run = async (dataset: string) => {
      const { job } = await a.align.createAlignJob({ spec: alignSpec(s.base, dataset, 6) });
      const events: JobEvent[] = [];
      for await (const r of a.align.watchAlignJob({ jobId: job!.id })) events.push(r.event!);
      return events;
    };
    // Without a byte quota: a training state at each of steps 1-5 (the result at 6).
    const free = await run(data.uri);
    expect(statesOf(free)).toHaveLength(5);
    const first = statesOf(free)[0].event;
    const oneState = first.case === "checkpointWritten" ? await checkpointBytes(s.deps.store, checkpointRefOf(first.value.checkpoint)) : 0;
    expect(oneState).toBeGreaterThan(0);
    // With room for half a state more: the first state takes the tenant over, and the job
    // goes on without the rest.
    s.deps.quotas = { jobs: 0, storedBytes: (await usageOf(s.deps.store, "team-a")) + Math.floor(oneState / 2) };
    const bounded = await run(other.uri);
    expect(bounded.at(-1)?.event).toMatchObject({ case: "stateChange", value: { to: JobState.SUCCEEDED } });
    expect(statesOf(bounded)).toHaveLength(1);
    const warnings = bounded.filter((e) => e.event.case === "log" && e.event.value.severity === LogSeverity.WARNING);
    expect(warnings).toHaveLength(1);
    expect(warnings[0].event.value).toMatchObject({ message: expect.stringContaining("no training state from step 2") });
    s.deps.quotas = { jobs: 0, storedBytes: 0 };
  });

  it("concurrent creates of one tenant never pass its job quota", async () => {
    const { a } = s.as;
    const data = await uploadAs(a, datasetBytes("", 4));
    s.deps.quotas = { jobs: 2, storedBytes: 0 };
    try {
      const tries = await Promise.allSettled(Array.from({ length: 5 }, () => a.align.createAlignJob({ spec: alignSpec(s.base, data.uri, 500) })));
      const created = createdWithinJobQuota(tries, "team-a", 2).map((r) => r.job!);
      expect(created).toHaveLength(2);
      for (const job of created) await a.align.cancelAlignJob({ jobId: job.id });
      for (const job of created) for await (const _ of a.align.watchAlignJob({ jobId: job.id }));
    } finally {
      s.deps.quotas = undefined;
    }
  }, 120_000);

  it("concurrent uploads never take a tenant over its byte quota", async () => {
    const { a } = s.as;
    const uploads = [datasetBytes("race", 6), datasetBytes("race", 5), datasetBytes("race", 4)];
    const start = await usageOf(s.deps.store, "team-a");
    // Room for any one of them, not for two.
    const limit = start + uploads[0].length;
    s.deps.quotas = { jobs: 0, storedBytes: limit };
    try {
      const tries = await Promise.allSettled(uploads.map((bytes) => uploadAs(a, bytes)));
      for (const t of tries) if (t.status === "rejected") expect(ConnectError.from(t.reason).code).toBe(Code.ResourceExhausted);
      const stored = tries.flatMap((t) => (t.status === "fulfilled" ? [t.value.uri] : []));
      expect(stored.length).toBeLessThanOrEqual(1);
      expect(await usageOf(s.deps.store, "team-a")).toBeLessThanOrEqual(limit);
      // What was refused is not stored; no reservation is left behind.
      const refused = uploads.map((b) => `store://datasets/${sha256(b)}`).filter((uri) => !stored.includes(uri));
      for (const uri of refused) expect(await storedDatasets()).not.toContain(uri);
      expect(await s.deps.store.listObjects("store://tenants/team-a/reservations")).toEqual([]);
      for (const uri of stored) await a.datasets.deleteDataset({ uri });
    } finally {
      s.deps.quotas = undefined;
    }
  });

  it("stops an upload the byte quota will refuse as it arrives, and takes a retried upload at the quota", async () => {
    const { b } = s.as;
    const owned = await uploadAs(b, datasetBytes("retried"));
    s.deps.quotas = { jobs: 0, storedBytes: await usageOf(s.deps.store, "team-b") };
    try {
      // 4 MB of rows of 1 KB, new to B, which is at its quota: nothing of it can be stored.
      const row = Buffer.from(JSON.stringify({ ...EXAMPLES[0], output: "x".repeat(1000) }) + "\n");
      const chunks = 4000;
      let read = 0;
      async function* rows() {
        yield create(UploadDatasetRequestSchema, { content: { case: "metadata", value: {} } });
        for (let i = 0; i < chunks; i++) yield (read++, create(UploadDatasetRequestSchema, { content: { case: "chunk", value: row } }));
      }
      const refused = await quotaFailure(() => b.datasets.uploadDataset(rows()));
      expect(refused.info).toMatchObject({ reason: "QUOTA_EXCEEDED", metadata: { tenant: "team-b", limit: "VACCINE_QUOTA_STORED_BYTES" } });
      expect(refused.message).toMatch(/This upload has sent \d+, more than the 0 left and than anything of its kind the tenant stores already \(\d+, a retried upload's most\): it was stopped there/);
      // The client's stream runs ahead of the server by HTTP/2's window, not by the whole upload.
      expect(read).toBeLessThan(chunks / 4);
      expect((await uploadAs(b, datasetBytes("retried"))).uri).toBe(owned.uri);
      await b.datasets.deleteDataset({ uri: owned.uri });
    } finally {
      s.deps.quotas = undefined;
    }
  });

  it("refuses an import over the byte quota without storing it, charges one that fits, and takes the same folder again at the quota", async () => {
    const { a } = s.as;
    const folder = fileURLToPath(new URL("../fixtures/llama-f32-gqa", import.meta.url));
    // Counts the messages the server read.
    let read = 0;
    async function* counted(messages: AsyncIterable<ImportCheckpointRequest>) {
      for await (const m of messages) yield (read++, m);
    }
    const importAs = (displayName = "quota", chunkBytes?: number) =>
      a.checkpoints.importCheckpoint(counted(folderMessages(folder, { type: CheckpointType.BASE_MODEL, displayName }, chunkBytes)));
    const files = await filesOf(folder);
    const size = (await Promise.all(files.map(async (f) => (await stat(join(folder, f))).size))).reduce((x, y) => x + y, 0);
    const start = await usageOf(s.deps.store, "team-a");
    const { largest } = await usageAndLargest(s.deps.store, "team-a", "checkpoints");
    const before = await s.deps.store.list();
    s.deps.quotas = { jobs: 0, storedBytes: start + 1000 };
    try {
      // Larger than the room left and than every checkpoint A owns: stopped as it arrives.
      expect(size).toBeGreaterThan(largest + 1000);
      const refused = await quotaFailure(() => importAs("quota", 1000));
      expect(refused.info).toMatchObject({ reason: "QUOTA_EXCEEDED", metadata: { tenant: "team-a", limit: "VACCINE_QUOTA_STORED_BYTES" } });
      expect(refused.message).toContain(`stores ${start} bytes; its quota is ${start + 1000} bytes. This upload has sent`);
      expect(read).toBeLessThan(size / 1000 / 2);
      expect(await s.deps.store.list()).toEqual(before);
      s.deps.quotas = { jobs: 0, storedBytes: start + 100e6 };
      const first = (await importAs()).checkpoint!;
      expect(await usageOf(s.deps.store, "team-a")).toBe(start + size);
      expect(await s.deps.store.listObjects("store://tenants/team-a/reservations")).toEqual([]);
      // At the quota: the same folder again (a retried call) is the checkpoint it owns, charged
      // once; under another name it would be another checkpoint, and is refused.
      s.deps.quotas = { jobs: 0, storedBytes: start + size };
      expect((await importAs()).checkpoint!.ref).toEqual(first.ref);
      expect(await usageOf(s.deps.store, "team-a")).toBe(start + size);
      await quotaFailure(() => importAs("another name"));
      // A delete gives the bytes back: the other name fits now. Another tenant's copy of the
      // same checkpoint keeps the files; the last owner's delete removes them.
      await s.as.b.checkpoints.importCheckpoint(folderMessages(folder, { type: CheckpointType.BASE_MODEL, displayName: "quota" }));
      await a.checkpoints.deleteCheckpoint({ checkpoint: first.ref });
      expect(await usageOf(s.deps.store, "team-a")).toBe(start);
      expect(await s.deps.store.exists(first.ref!)).toBe(true);
      expect((await rpcFailure(() => a.checkpoints.getCheckpoint({ checkpoint: first.ref }))).code).toBe(Code.NotFound);
      const other = (await importAs("another name")).checkpoint!;
      await a.checkpoints.deleteCheckpoint({ checkpoint: other.ref });
      await s.as.b.checkpoints.deleteCheckpoint({ checkpoint: first.ref });
      expect(await s.deps.store.exists(first.ref!)).toBe(false);
      expect(await s.deps.store.exists(other.ref!)).toBe(false);
    } finally {
      s.deps.quotas = undefined;
    }
  });
});
