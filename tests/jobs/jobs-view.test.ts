// What a process serving deletes without the job services sees of the jobs (jobs-view.ts):
// the records of an embedded executor's jobs folder, or of the queue's Redis, and UNAVAILABLE
// while Redis is away; and which view createDeps gives a process of each kind.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { metrics, trace } from "@opentelemetry/api";
import { afterAll, describe, expect, it } from "vitest";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { folderJobsView, queueJobsView } from "../../services/jobs/jobs-view.ts";
import { LocalExecutor } from "../../services/jobs/local-executor.ts";
import { QueueExecutor } from "../../services/jobs/queue/queue-executor.ts";
import { rpcError } from "../../services/platform/errors.ts";
import { silentLogger } from "../../services/platform/log.ts";
import { createDeps } from "../../services/suite/create-deps.ts";
import { startRedis } from "../../scripts/redis-server.ts";
import type { ServiceName } from "../../services/suite/config.ts";
import { testConfig } from "../helpers/server.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-jobs-view-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const spec = { case: "align" as const, value: create(AlignSpecSchema, {}) };
const mapError = (err: unknown) => (err instanceof ConnectError ? err : rpcError(Code.Internal, "INTERNAL", String(err)));
// Work that never ends on its own: the job stays running until shutdown.
const forever = { [JobKind.ALIGN]: (ctx: { signal: AbortSignal }) => new Promise<undefined>((resolve) => ctx.signal.addEventListener("abort", () => resolve(undefined))) };

describe("the jobs folder's view", () => {
  it("sees another executor's unfinished jobs, by tenant, and makes no folder where there is none", async () => {
    const dir = join(root, "jobs");
    const ex = new LocalExecutor({ dir, work: forever, mapError });
    const a = await ex.create(JobKind.ALIGN, spec, "team-a");
    const b = await ex.create(JobKind.ALIGN, spec, "team-b");
    const view = folderJobsView(dir);
    expect((await view.unfinished()).map((j) => j.id).sort()).toEqual([a.id, b.id].sort());
    expect((await view.unfinished("team-b")).map((j) => j.id)).toEqual([b.id]);
    await ex.cancel(JobKind.ALIGN, b.id);
    expect((await view.unfinished()).map((j) => j.id)).toEqual([a.id]);
    await ex.shutdown();
    const none = join(root, "none");
    expect(await folderJobsView(none).unfinished()).toEqual([]);
    expect(existsSync(none)).toBe(false);
  });
});

describe("the queue's view", () => {
  it("sees the jobs an api queued, and is UNAVAILABLE while Redis is away", async () => {
    const redis = await startRedis();
    const prefix = "view";
    const api = new QueueExecutor({ url: redis.url, prefix });
    const view = queueJobsView({ url: redis.url, prefix });
    try {
      const job = await api.create(JobKind.FINE_TUNE, spec, "team-a");
      expect((await view.unfinished("team-a")).map((j) => j.id)).toEqual([job.id]);
      expect(await view.unfinished("team-b")).toEqual([]);
      await redis.stop();
      await expect(view.unfinished()).rejects.toMatchObject({ code: Code.Unavailable, rawMessage: expect.stringContaining("the job queue cannot be reached") });
    } finally {
      await Promise.all([api.shutdown(), view.shutdown(), redis.stop()]);
    }
  }, 30_000);
});

describe("createDeps", () => {
  const config = (services: ServiceName[], queueUrl = "") => testConfig(root, { jobsDir: join(root, "deps-jobs"), services, queueUrl });
  const telemetry = { tracer: trace.getTracer("t"), meter: metrics.getMeter("t") };

  it("gives deletes the executor where the job services run, a view of the jobs where only deletes do, and nothing elsewhere", async () => {
    const all = createDeps(config(["align", "checkpoints"]), telemetry, silentLogger);
    expect(all.jobs).toBe(all.executor);
    expect(all.jobsView).toBeUndefined();
    const job = await all.executor!.create(JobKind.ALIGN, spec, "team-a");
    const deletes = createDeps(config(["checkpoints", "datasets"]), telemetry, silentLogger);
    expect(deletes.executor).toBeUndefined();
    expect(deletes.jobs).toBe(deletes.jobsView);
    expect((await deletes.jobs!.unfinished()).map((j) => j.id)).toContain(job.id);
    await all.executor!.shutdown();
    expect(createDeps(config(["embed", "score"]), telemetry, silentLogger).jobs).toBeUndefined();
    const queued = createDeps(config(["datasets"], "redis://127.0.0.1:1/0"), telemetry, silentLogger);
    await expect(queued.jobs!.unfinished()).rejects.toMatchObject({ code: Code.Unavailable });
    await queued.jobsView!.shutdown();
  }, 30_000);
});
