// The distributed executor (api QueueExecutor + QueueWorker on BullMQ) with stand-in work
// functions, against a real redis-server and a real Redis Cluster of three: queueing, cancel
// from another api, watch history + live + resume, list paging, bounded attempts, fencing after
// a takeover, shutdown hand-back.
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { anyUnpack, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { context, SpanStatusCode, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { Cluster } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { CheckpointRefSchema } from "../../gen/vaccine/v1/common_pb.ts";
import { Queue } from "bullmq";
import { JobKind, JobSchema, JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { AlignSpecSchema, FineTuneSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import type { JobContext, JobWork } from "../../services/jobs/executor.ts";
import { connectQueue, QUEUE_NAME, queueKeys } from "../../services/jobs/queue/connection.ts";
import { QueueExecutor } from "../../services/jobs/queue/queue-executor.ts";
import { QueueWorker, type QueueWorkerOptions } from "../../services/jobs/queue/queue-worker.ts";
import { jobIdFor } from "../../services/jobs/new-job.ts";
import { RedisJobs } from "../../services/jobs/queue/redis-jobs.ts";
import { rpcError } from "../../services/platform/errors.ts";
import { createLogger } from "../../services/platform/log.ts";
import { createdWithinJobQuota } from "../helpers/errors.ts";
import { startRedis, startRedisCluster, type TestRedis } from "../../scripts/redis-server.ts";

// Each test has its own key prefix on the one server (or cluster), and closes what it opened.
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

const ref = (n: number) => create(CheckpointRefSchema, { uri: `store://checkpoints/${n}`, digest: "sha256:" + String(n).repeat(64).slice(0, 64) });
const spec = { case: "align" as const, value: create(AlignSpecSchema, {}) };
const mapError = (err: unknown) => (err instanceof ConnectError ? err : rpcError(Code.Internal, "INTERNAL", String(err)));

/** A work function the test drives by hand: resolves when released, or stops (writing a training state) when signalled. */
function controllable(stateOnStop = 7) {
  const started: JobContext[] = [];
  const releases = new Map<string, (n: number) => void>();
  const work: JobWork = (ctx) =>
    new Promise((resolve) => {
      started.push(ctx);
      releases.set(ctx.job.id, (n) => resolve({ result: ref(n), lineage: [ref(0), ref(n)] }));
      ctx.signal.addEventListener("abort", () => {
        ctx.setTrainingState(ref(stateOnStop));
        resolve(undefined);
      });
    });
  return { work, started, release: (id: string, n = 1) => releases.get(id)!(n) };
}

/** Work of two steps that waits after the first until resume(), counting its runs. */
function heldRun() {
  let resume!: () => void;
  const resumed = new Promise<void>((r) => (resume = r));
  const held = {
    runs: 0,
    resume: () => resume(),
    work: (async (ctx) => {
      held.runs++;
      ctx.emit({ case: "step", value: { step: 1, totalSteps: 2 } });
      await resumed;
      ctx.emit({ case: "step", value: { step: 2, totalSteps: 2 } });
      return { result: ref(2), lineage: [ref(2)] };
    }) as JobWork,
  };
  return held;
}

const tick = () => new Promise((r) => setTimeout(r, 10));
async function until(cond: () => boolean | Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (Date.now() < end && !(await cond())) await tick();
  expect(await cond()).toBe(true);
}
async function collect(it: AsyncIterable<JobEvent>, max = Infinity) {
  const out: JobEvent[] = [];
  for await (const e of it) {
    out.push(e);
    if (out.length >= max) break;
  }
  return out;
}
const states = (events: JobEvent[]) => events.flatMap((e) => (e.event.case === "stateChange" ? [JobState[e.event.value.to]] : []));
const steps = (events: JobEvent[]) => events.flatMap((e) => (e.event.case === "step" ? [e.event.value.step] : []));
const watchAll = (ex: QueueExecutor, id: string, after = 0) => collect(ex.watch(JobKind.ALIGN, id, new AbortController().signal, after));
const stateOf = async (ex: QueueExecutor, id: string) => (await ex.get(JobKind.ALIGN, id)).state;

// In the cluster every key of a prefix is in its hash tag's slot: without that, the record's
// scripts (five keys) and BullMQ's fail with CROSSSLOT.
describe.each([
  { on: "one server", cluster: false },
  { on: "a Redis Cluster of three", cluster: true },
])("QueueExecutor and QueueWorker on $on", ({ cluster }) => {
  let redis: TestRedis & { nodes?: TestRedis[] };
  beforeAll(async () => {
    redis = cluster ? await startRedisCluster() : await startRedis();
  });
  afterAll(() => redis?.stop());

  function setup() {
    const prefix = `t${randomUUID().slice(0, 8)}`;
    const target = { url: redis.url, cluster };
    const api = (o: Partial<ConstructorParameters<typeof QueueExecutor>[0]> = {}) => {
      const ex = new QueueExecutor({ ...target, prefix, ...o });
      closers.push(() => ex.shutdown());
      return ex;
    };
    const worker = (work: JobWork, o: Partial<QueueWorkerOptions> = {}) => {
      const w = new QueueWorker({ ...target, prefix, work: { [JobKind.ALIGN]: work, [JobKind.FINE_TUNE]: work }, mapError, retryDelayMs: 20, pollMs: 100, ...o });
      closers.push(() => w.shutdown());
      w.start();
      return w;
    };
    const keys = queueKeys(prefix, cluster);
    /** A client of the test's own, and BullMQ's queue on another, as an api has them. */
    const direct = () => {
      const [conn, queueConn] = [connectQueue(target, null), connectQueue(target, null)];
      const queue = new Queue(QUEUE_NAME, { connection: queueConn, prefix: keys.prefix });
      closers.push(async () => void (await queue.close(), await queueConn.quit(), await conn.quit()));
      return { conn, queue, jobs: new RedisJobs(conn, keys) };
    };
    return { api, worker, keys, direct };
  }
  it("queues jobs, runs one at a time on a worker of concurrency 1, and records results", async () => {
    const { api, worker } = setup();
    const c = controllable();
    const ex = api();
    worker(c.work);
    const a = await ex.create(JobKind.ALIGN, spec);
    expect(a.state).toBe(JobState.QUEUED);
    await until(async () => c.started.length === 1 && (await stateOf(ex, a.id)) === JobState.RUNNING);
    // Created once a runs, so b waits behind a running job.
    const b = await ex.create(JobKind.ALIGN, spec);
    expect(await stateOf(ex, b.id)).toBe(JobState.QUEUED);
    c.release(a.id, 1);
    await until(() => c.started.length === 2);
    expect(await ex.get(JobKind.ALIGN, a.id)).toMatchObject({ state: JobState.SUCCEEDED, result: { uri: "store://checkpoints/1" } });
    expect((await ex.get(JobKind.ALIGN, a.id)).lineage.map((r) => r.uri)).toEqual(["store://checkpoints/0", "store://checkpoints/1"]);
    c.release(b.id, 2);
    await until(async () => (await stateOf(ex, b.id)) === JobState.SUCCEEDED);
    expect(states(await watchAll(ex, b.id))).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
  });

  it("serves every Watch's live events on one Redis connection, each from its own sequence, and events of several jobs apart", async () => {
    const { api, worker, direct } = setup();
    const { conn } = direct();
    const c = controllable();
    const ex = api();
    worker(c.work);
    // Summed over a cluster's nodes: one client asks a node of its choosing.
    const nodes = conn instanceof Cluster ? conn.nodes("master") : [conn];
    const clients = async () => (await Promise.all(nodes.map(async (n) => Number(((await n.info("clients")).match(/connected_clients:(\d+)/) ?? [])[1])))).reduce((a, b) => a + b, 0);
    const jobs = [await ex.create(JobKind.ALIGN, spec), await ex.create(JobKind.ALIGN, spec)];
    await until(() => c.started.length === 1);
    const [running, queued] = jobs[0].id === c.started[0].job.id ? jobs : [jobs[1], jobs[0]];
    await until(async () => (await stateOf(ex, running.id)) === JobState.RUNNING);
    const before = await clients();
    // 20 Watches of the running job from the start, 10 after its first two events, 10 of the queued job.
    const cuts = Array.from({ length: 40 }, () => new AbortController());
    const watchOf = (i: number) => (i < 20 ? ex.watch(JobKind.ALIGN, running.id, cuts[i].signal) : i < 30 ? ex.watch(JobKind.ALIGN, running.id, cuts[i].signal, 2) : ex.watch(JobKind.ALIGN, queued.id, cuts[i].signal));
    const streams = cuts.map((_, i) => watchOf(i)[Symbol.asyncIterator]());
    const firsts = await Promise.all(streams.slice(0, 20).map(async (w) => [(await w.next()).value!.sequence, (await w.next()).value!.sequence]));
    expect(firsts).toEqual(Array(20).fill([1, 2]));
    expect(await Promise.all(streams.slice(30).map(async (w) => (await w.next()).value!.sequence))).toEqual(Array(10).fill(1));
    // Live: the running job's step reaches its 30 Watches; the queued job's Watches get its cancel.
    const next = streams.map((w) => w.next());
    c.started[0].emit({ case: "step", value: { step: 1, totalSteps: 2 } });
    for (const r of await Promise.all(next.slice(0, 30))) expect(r.value).toMatchObject({ sequence: 3, event: { case: "step" } });
    await ex.cancel(JobKind.ALIGN, queued.id);
    for (const r of await Promise.all(next.slice(30))) expect(r.value).toMatchObject({ sequence: 2, event: { case: "stateChange", value: { to: JobState.CANCELLED } } });
    // The blocking reader is the one client the Watches added (a cluster client connects to each node).
    expect(await clients()).toBeLessThanOrEqual(before + nodes.length);
    for (const cut of cuts) cut.abort();
    await Promise.all(streams.map((w) => w.return?.(undefined)));
    await ex.cancel(JobKind.ALIGN, running.id);
  });

  it("serves at most maxWatches Watch streams at once", async () => {
    const { api } = setup();
    const ex = api({ maxWatches: 2 });
    const job = await ex.create(JobKind.ALIGN, spec); // queued: no worker here, so its Watches stay open
    const cuts = [new AbortController(), new AbortController()];
    const open = cuts.map((c) => ex.watch(JobKind.ALIGN, job.id, c.signal)[Symbol.asyncIterator]());
    // The first event of each: both streams are open.
    for (const w of open) expect((await w.next()).value?.sequence).toBe(1);
    const refused = await ex.watch(JobKind.ALIGN, job.id, new AbortController().signal)[Symbol.asyncIterator]().next().catch((e: ConnectError) => e);
    expect(refused).toMatchObject({ code: Code.ResourceExhausted, rawMessage: expect.stringContaining("VACCINE_MAX_WATCHES") });
    // One ends: a Watch is served again.
    cuts[0].abort();
    await open[0].return?.(undefined);
    const last = new AbortController();
    const again = ex.watch(JobKind.ALIGN, job.id, last.signal)[Symbol.asyncIterator]();
    expect((await again.next()).value?.sequence).toBe(1);
    cuts[1].abort();
    last.abort();
    await Promise.all([open[1].return?.(undefined), again.return?.(undefined)]);
  });

  it("cancels from another api: a queued job at once, a running one after its step", async () => {
    const { api, worker } = setup();
    const c = controllable();
    const [ex1, ex2] = [api(), api()];
    worker(c.work);
    const a = await ex1.create(JobKind.ALIGN, spec);
    await until(async () => c.started.length === 1 && (await stateOf(ex2, a.id)) === JobState.RUNNING);
    // Created once a runs, so b is cancelled while queued behind a running job.
    const b = await ex1.create(JobKind.ALIGN, spec);
    expect(await stateOf(ex2, b.id)).toBe(JobState.QUEUED);
    // Each answer carries the sequence of the event its change wrote: b's QUEUED, CANCELLED;
    // a's QUEUED, RUNNING, CANCELLING.
    expect(await ex2.cancel(JobKind.ALIGN, b.id)).toMatchObject({ state: JobState.CANCELLED, lastSequence: 2 });
    expect(await ex2.cancel(JobKind.ALIGN, a.id)).toMatchObject({ state: JobState.CANCELLING, lastSequence: 3 });
    const events = await watchAll(ex1, a.id);
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]);
    const job = await ex1.get(JobKind.ALIGN, a.id);
    expect(job.error?.code).toBe(Code.Canceled);
    expect(anyUnpack(job.error!.details[0], ErrorInfoSchema)?.reason).toBe("JOB_CANCELLED");
    expect(job.trainingState?.uri).toBe("store://checkpoints/7");
    expect((await ex1.cancel(JobKind.ALIGN, a.id)).state).toBe(JobState.CANCELLED);
    // b never ran, even after a's slot was free.
    await new Promise((r) => setTimeout(r, 300));
    expect(c.started).toHaveLength(1);
  });

  it("watch from another api: history, then live events, resumable from a sequence number", async () => {
    const { api, worker } = setup();
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    const [ex1, ex2] = [api(), api()];
    let emitted = false;
    worker(async (ctx) => {
      for (let step = 1; step <= 3; step++) ctx.emit({ case: "step", value: { step, totalSteps: 6, loss: 1 / step } });
      emitted = true;
      await gate;
      for (let step = 4; step <= 6; step++) ctx.emit({ case: "step", value: { step, totalSteps: 6, loss: 1 / step } });
      return { result: ref(6), lineage: [ref(6)] };
    });
    const job = await ex1.create(JobKind.ALIGN, spec);
    expect(job.lastSequence).toBe(1);
    // Steps 1-3 come as history (a watch cut short sees them), 4-6 live.
    await until(() => emitted);
    const cut = new AbortController();
    setTimeout(() => cut.abort(), 300);
    expect(steps(await collect(ex2.watch(JobKind.ALIGN, job.id, cut.signal)))).toEqual([1, 2, 3]);
    const live = watchAll(ex2, job.id);
    // A client that reads the job and then watches after its last_sequence gets only what
    // happens next: QUEUED, RUNNING and steps 1-3 were read with the job.
    const read = await ex2.get(JobKind.ALIGN, job.id);
    expect(read.lastSequence).toBe(5);
    const next = watchAll(ex1, job.id, read.lastSequence);
    // A client that claims more events than the job has (a sequence from another job, or a
    // race with the job's end) still sees the watch end with the job, as on the embedded executor.
    const ahead = watchAll(ex1, job.id, 2 ** 31 - 1);
    await tick();
    go();
    const events = await live;
    expect(await ahead).toEqual([]);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(steps(events)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
    expect(await next).toEqual(events.slice(5));
    expect((await ex1.get(JobKind.ALIGN, job.id)).lastSequence).toBe(events.length);
    expect((await ex2.list(JobKind.ALIGN, 10, "")).jobs.map((j) => j.lastSequence)).toEqual([events.length]);
    // Resumed after the fourth event: exactly the rest, same numbers.
    const resumed = await watchAll(ex1, job.id, 4);
    expect(resumed.map((e) => e.sequence)).toEqual(events.slice(4).map((e) => e.sequence));
    // Resumed after the last: ends at once.
    expect(await watchAll(ex1, job.id, events.length)).toEqual([]);
  });

  it("lists newest first in stable pages on every api; NOT_FOUND and bad tokens", async () => {
    const { api } = setup();
    const [ex1, ex2] = [api(), api()];
    const ids: string[] = [];
    // Members sort by create time in milliseconds, then id: jobs created within one
    // millisecond list in id order, so each job here gets a millisecond of its own.
    const tick = () => new Promise((r) => setTimeout(r, 2));
    for (let i = 0; i < 5; i++) {
      ids.push((await (i % 2 ? ex2 : ex1).create(JobKind.ALIGN, spec)).id);
      await tick();
    }
    await ex1.create(JobKind.FINE_TUNE, { case: "fineTune", value: create(FineTuneSpecSchema, {}) });
    const page1 = await ex2.list(JobKind.ALIGN, 2, "");
    // A job created between pages does not shift the next ones.
    await ex1.create(JobKind.ALIGN, spec);
    const page2 = await ex1.list(JobKind.ALIGN, 2, page1.nextPageToken);
    const page3 = await ex2.list(JobKind.ALIGN, 2, page2.nextPageToken);
    expect([...page1.jobs, ...page2.jobs, ...page3.jobs].map((j) => j.id)).toEqual([...ids].reverse());
    expect(page3.nextPageToken).toBe("");
    await expect(ex1.list(JobKind.ALIGN, 2, "bm90LWEtbnVtYmVy")).rejects.toThrow(/page_token/);
    await expect(ex1.list(JobKind.FINE_TUNE, 2, page1.nextPageToken)).rejects.toThrow(/page_token/); // another kind's
    await expect(ex1.get(JobKind.ALIGN, "align-00000000-0000-0000-0000-000000000000")).rejects.toThrow(/not found/);
    const ft = (await ex2.list(JobKind.FINE_TUNE, 10, "")).jobs;
    expect(ft).toHaveLength(1);
    await expect(ex1.get(JobKind.ALIGN, ft[0].id)).rejects.toThrow(ConnectError);
  });

  it("retries a retryable failure a bounded number of times, then FAILS with the reason; a non-retryable one fails at once", async () => {
    const { api, worker } = setup();
    const ex = api();
    const runs = new Map<string, number>();
    const exporter = new InMemorySpanExporter();
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    worker(
      async (ctx) => {
        runs.set(ctx.job.id, (runs.get(ctx.job.id) ?? 0) + 1);
        if (ctx.job.spec.case === "align") throw rpcError(Code.Unavailable, "STORE_UNAVAILABLE", "the store timed out");
        throw rpcError(Code.FailedPrecondition, "LOSS_NOT_FINITE", "the loss at step 3 is NaN");
      },
      { maxAttempts: 3, tracer },
    );
    const a = await ex.create(JobKind.ALIGN, spec);
    const f = await ex.create(JobKind.FINE_TUNE, { case: "fineTune", value: create(FineTuneSpecSchema, {}) });
    await until(async () => (await stateOf(ex, a.id)) === JobState.FAILED && (await ex.get(JobKind.FINE_TUNE, f.id)).state === JobState.FAILED);
    const failed = await ex.get(JobKind.ALIGN, a.id);
    expect(runs.get(a.id)).toBe(3);
    expect(failed.error?.code).toBe(Code.Unavailable);
    expect(failed.error?.message).toContain("the store timed out (failed 3 of 3 runs)");
    expect(anyUnpack(failed.error!.details[0], ErrorInfoSchema)).toMatchObject({ reason: "STORE_UNAVAILABLE", metadata: { attempts: "3" } });
    expect(states(await watchAll(ex, a.id))).toEqual(["QUEUED", "RUNNING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED"]);
    expect(runs.get(f.id)).toBe(1);
    expect(anyUnpack((await ex.get(JobKind.FINE_TUNE, f.id)).error!.details[0], ErrorInfoSchema)?.reason).toBe("LOSS_NOT_FINITE");
    // Every failed run's span is an error, its exception typed by the reason: span metrics count them.
    await until(() => exporter.getFinishedSpans().filter((s) => s.name.startsWith("job ")).length === 4);
    for (const span of exporter.getFinishedSpans().filter((s) => s.name.startsWith("job "))) {
      expect(span.status.code).toBe(SpanStatusCode.ERROR);
      const type = span.events.find((e) => e.name === "exception")?.attributes?.["exception.type"];
      expect(type).toBe(span.name === "job align" ? "STORE_UNAVAILABLE" : "LOSS_NOT_FINITE");
    }
    // Nothing is retried afterwards.
    await new Promise((r) => setTimeout(r, 300));
    expect(runs.get(a.id)).toBe(3);
  });

  it("fences a worker whose lock was taken over: it cannot write; the new owner resumes from the training state", async () => {
    const { api, worker } = setup();
    const ex = api();
    let releaseA!: () => void;
    const blocked = new Promise<void>((r) => (releaseA = r));
    let aDone = false;
    const a = worker(
      async (ctx) => {
        ctx.emit({ case: "step", value: { step: 1, totalSteps: 2 } });
        ctx.setTrainingState(ref(5));
        // Stands for a worker that stopped renewing its lock (a blocked loop, a partition).
        await blocked;
        ctx.emit({ case: "step", value: { step: 99, totalSteps: 2 } });
        ctx.setTrainingState(ref(66));
        aDone = true;
        return { result: ref(66), lineage: [ref(66)] };
      },
      { lockMs: 600 },
    );
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).trainingState?.uri === "store://checkpoints/5");
    // Lock renewal stops, the processor keeps running.
    await a["worker"].close(true);
    let resumedFrom: string | undefined;
    worker(
      async (ctx) => {
        resumedFrom = ctx.job.trainingState?.uri;
        releaseA();
        await until(() => aDone);
        await new Promise((r) => setTimeout(r, 100));
        ctx.emit({ case: "step", value: { step: 2, totalSteps: 2 } });
        return { result: ref(2), lineage: [ref(2)] };
      },
      { lockMs: 600 },
    );
    await until(async () => (await stateOf(ex, job.id)) === JobState.SUCCEEDED, 15_000);
    expect(resumedFrom).toBe("store://checkpoints/5");
    const done = await ex.get(JobKind.ALIGN, job.id);
    expect(done.result?.uri).toBe("store://checkpoints/2");
    expect(done.trainingState?.uri).toBe("store://checkpoints/5");
    const events = await watchAll(ex, job.id);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(steps(events)).toEqual([1, 2]);
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]);
    expect(events.some((e) => e.event.case === "log" && /worker was lost mid-job \(1 of 3/.test(e.event.value.message))).toBe(true);
  });

  it("fails a job whose workers keep getting lost after the bounded number of runs", async () => {
    const { api, worker } = setup();
    const ex = api();
    const job = await ex.create(JobKind.ALIGN, spec);
    for (let run = 1; run <= 2; run++) {
      let started = false;
      const w = worker(
        async () => {
          started = true;
          return new Promise(() => {});
        },
        { lockMs: 400, maxAttempts: 2 },
      );
      await until(() => started, 15_000);
      await w["worker"].close(true);
    }
    const logged: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (line: string) => void logged.push(JSON.parse(line)) });
    const exporter = new InMemorySpanExporter();
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    worker(async () => ({ result: ref(1), lineage: [ref(1)] }), { lockMs: 400, maxAttempts: 2, logger, tracer });
    await until(async () => (await stateOf(ex, job.id)) === JobState.FAILED, 15_000);
    // The worker that finds the job orphaned says so in its log, not only in the job's events.
    expect(logged.find((l) => (l.msg as string).startsWith("took over a job whose worker was lost"))).toMatchObject({ job: job.id, failedRuns: 2, allowed: 2 });
    const failed = await ex.get(JobKind.ALIGN, job.id);
    expect(anyUnpack(failed.error!.details[0], ErrorInfoSchema)).toMatchObject({ reason: "WORKER_LOST", metadata: { attempts: "2" } });
    // And the failure, as any job's: a log line with the reason, and a job span in ERROR.
    await until(() => logged.some((l) => l.msg === "job failed"));
    expect(logged.find((l) => l.msg === "job failed")).toMatchObject({ job: job.id, code: "Aborted", error: expect.stringContaining("worker was lost 2 times") });
    const span = exporter.getFinishedSpans().find((x) => x.name === "job align")!;
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
    expect(span.events.find((e) => e.name === "exception")?.attributes).toMatchObject({ "exception.type": "WORKER_LOST" });
  });

  it("at worker shutdown hands a running job back to the queue; another worker resumes it", async () => {
    const { api, worker } = setup();
    const ex = api();
    const c = controllable(7);
    const logged: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (line: string) => void logged.push(JSON.parse(line)) });
    const w1 = worker(c.work, { logger, id: "w1" });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => c.started.length === 1 && (await stateOf(ex, job.id)) === JobState.RUNNING);
    await w1.shutdown();
    expect(await ex.get(JobKind.ALIGN, job.id)).toMatchObject({ state: JobState.QUEUED, trainingState: { uri: "store://checkpoints/7" } });
    let resumedFrom: string | undefined;
    worker(
      async (ctx) => {
        resumedFrom = ctx.job.trainingState?.uri;
        return { result: ref(9), lineage: [ref(9)] };
      },
      { logger, id: "w2" },
    );
    await until(async () => (await stateOf(ex, job.id)) === JobState.SUCCEEDED);
    expect(resumedFrom).toBe("store://checkpoints/7");
    // The workers' logs say how each run ended: handed back by w1, finished by w2.
    await until(() => logged.filter((l) => l.msg === "job run ended").length === 2);
    const ended = logged.filter((l) => l.msg === "job run ended").map((l) => [l.worker, l.job, l.outcome]);
    expect(ended).toEqual([
      ["w1", job.id, "requeued"],
      ["w2", job.id, "succeeded"],
    ]);
    // And where each run started from: w2 names the training state it resumes.
    expect(logged.filter((l) => l.msg === "job started").map((l) => [l.worker, l.resumes_from])).toEqual([
      ["w1", undefined],
      ["w2", "store://checkpoints/7"],
    ]);
    expect(states(await watchAll(ex, job.id))).toEqual(["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]);
  });

  it("runs a job queued before its record was written once the record appears (the api enqueues first)", async () => {
    const { api, worker, direct } = setup();
    const ex = api();
    let runs = 0;
    worker(async () => {
      runs++;
      return { result: ref(1), lineage: [ref(1)] };
    });
    const { queue, jobs } = direct();
    const id = `align-${randomUUID()}`;
    await queue.add("align", { id, trace: {} }, { jobId: id });
    await new Promise((r) => setTimeout(r, 800));
    expect(runs).toBe(0);
    const job = create(JobSchema, { id, kind: JobKind.ALIGN, state: JobState.QUEUED, createTime: timestampNow(), progress: {}, spec });
    await jobs.create(job, undefined, { case: "stateChange", value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED } });
    await until(async () => (await stateOf(ex, id)) === JobState.SUCCEEDED);
    expect(runs).toBe(1);
  });

  it("keeps the queue's order when a job's record lands just after a worker took the job (it waits in place)", async () => {
    const { worker, direct } = setup();
    const order: string[] = [];
    worker(async (ctx) => {
      order.push(ctx.job.id);
      return { result: ref(1), lineage: [ref(1)] };
    });
    const { queue, jobs } = direct();
    const record = (id: string) =>
      jobs.create(create(JobSchema, { id, kind: JobKind.ALIGN, state: JobState.QUEUED, createTime: timestampNow(), progress: {}, spec }), undefined, {
        case: "stateChange",
        value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED },
      });
    const [first, second] = [`align-${randomUUID()}`, `align-${randomUUID()}`];
    await queue.add("align", { id: first, trace: {} }, { jobId: first });
    await queue.add("align", { id: second, trace: {} }, { jobId: second });
    await record(second);
    // The first job's api records it a moment late; the worker has taken it already.
    await new Promise((r) => setTimeout(r, 50));
    await record(first);
    await until(() => order.length === 2);
    expect(order).toEqual([first, second]);
  });

  it("checks a tenant's job quota in the record's script: concurrent creates on two apis never pass it, and refused ones leave nothing queued", async () => {
    const { api, direct } = setup();
    const [ex1, ex2] = [api(), api()];
    const { queue } = direct();
    // Created together, they all pass the check made before queueing; the script refuses the rest.
    const tries = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => (i % 2 ? ex1 : ex2).create(JobKind.ALIGN, spec, "team-a", 2)));
    const created = createdWithinJobQuota(tries, "team-a", 2);
    expect(created).toHaveLength(2);
    expect((await queue.getWaiting()).map((j) => j.id).sort()).toEqual(created.map((j) => j.id).sort());
    // Another tenant's jobs are its own; an ended job frees its slot.
    await ex1.create(JobKind.ALIGN, spec, "team-b", 2);
    await expect(ex2.create(JobKind.FINE_TUNE, spec, "team-a", 2)).rejects.toThrow(/quota is 2/);
    await ex2.cancel(JobKind.ALIGN, created[0].id);
    await ex2.create(JobKind.FINE_TUNE, spec, "team-a", 2);
  });

  it("answers every api the unfinished jobs of every kind, of one tenant or all; ended ones leave the set", async () => {
    const { api, worker, direct, keys } = setup();
    const c = controllable();
    const [ex1, ex2] = [api(), api()];
    worker(c.work);
    const running = await ex1.create(JobKind.ALIGN, spec, "team-a");
    await until(async () => c.started.length === 1 && (await stateOf(ex2, running.id)) === JobState.RUNNING);
    const queued = await ex1.create(JobKind.FINE_TUNE, spec);
    const cancelled = await ex1.create(JobKind.ALIGN, spec, "team-a");
    await ex2.cancel(JobKind.ALIGN, cancelled.id);
    // The cancel's write took the job out of the set, before any delete asked.
    const { conn } = direct();
    expect((await conn.smembers(keys.unfinished)).sort()).toEqual([running.id, queued.id].sort());
    const ids = async (tenant?: string) => (await ex2.unfinished(tenant)).map((j) => j.id).sort();
    expect(await ids()).toEqual([running.id, queued.id].sort());
    expect(await ids("team-a")).toEqual([running.id]);
    expect(await ids("")).toEqual([queued.id]);
    c.release(running.id);
    await until(async () => (await stateOf(ex1, running.id)) === JobState.SUCCEEDED);
    expect(await conn.smembers(keys.unfinished)).toEqual([queued.id]);
    expect(await ids()).toEqual([queued.id]);
    // A queue from before the set: its jobs not final are found once, from their records.
    await conn.del(keys.unfinished, keys.unfinishedFilled);
    expect(await ids()).toEqual([queued.id]);
    expect(await conn.exists(keys.unfinishedFilled)).toBe(1);
    expect(await ids("team-a")).toEqual([]);
  });

  it("makes one job of concurrent creates with one request_id on two apis, queued once; a tenant's id is its own", async () => {
    const { api, direct } = setup();
    const [ex1, ex2] = [api(), api()];
    const { queue } = direct();
    const tries = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? ex1 : ex2).create(JobKind.ALIGN, spec, "team-a", 0, "r1")));
    const ids = new Set(tries.map((j) => j.id));
    expect(ids).toEqual(new Set([jobIdFor(JobKind.ALIGN, "team-a", "r1")]));
    expect((await queue.getWaiting()).map((j) => j.id)).toEqual([...ids]);
    const other = await ex1.create(JobKind.ALIGN, spec, "team-b", 0, "r1");
    expect(ids.has(other.id)).toBe(false);
    // A retry at the job quota is the job it made, not a refusal, sequential or concurrent
    // (the concurrent one's count could see the job its twin just recorded).
    expect((await ex2.create(JobKind.ALIGN, spec, "team-a", 1, "r1")).id).toBe([...ids][0]);
    for (let round = 0; round < 60; round++) {
      const id = `race-${round}`;
      // The second a few ms later: it may read before the first records, and count after.
      const late = new Promise<void>((r) => setTimeout(r, round % 5)).then(() => ex2.create(JobKind.ALIGN, spec, `t${round}`, 1, id));
      const pair = await Promise.all([ex1.create(JobKind.ALIGN, spec, `t${round}`, 1, id), late]);
      expect(pair[0].id).toBe(pair[1].id);
    }
    await expect(ex2.create(JobKind.ALIGN, { case: "align", value: create(AlignSpecSchema, { lora: { rank: 2 } }) }, "team-a", 0, "r1")).rejects.toMatchObject({ code: Code.AlreadyExists });
  });

  it("stops an idle worker at once while Redis cannot be reached", async () => {
    const down = cluster ? await startRedisCluster() : await startRedis();
    await down.stop();
    const w = new QueueWorker({ url: down.url, cluster, prefix: "down", work: { [JobKind.ALIGN]: async () => undefined, [JobKind.FINE_TUNE]: async () => undefined }, mapError });
    w.start();
    await new Promise((r) => setTimeout(r, 500));
    const t = Date.now();
    // It used to wait for Redis, holding a pod's stop to its shutdown timeout (90 s in the manifests).
    await w.shutdown();
    expect(Date.now() - t).toBeLessThan(5000);
  });

  it("answers UNAVAILABLE while Redis cannot be reached", async () => {
    const down = cluster ? await startRedisCluster() : await startRedis();
    const url = down.url;
    await down.stop();
    const logged: Record<string, unknown>[] = [];
    const logger = createLogger("warn", { write: (s: string) => void logged.push(JSON.parse(s)) });
    const ex = new QueueExecutor({ url, cluster, prefix: "down", enqueueTimeoutMs: 500, logger, availabilityProbeMs: 200 });
    closers.push(() => ex.shutdown());
    const availability: boolean[] = [];
    const unwatch = ex.watchAvailability((up) => availability.push(up));
    closers.push(async () => unwatch());
    const t = Date.now();
    const e = await ex.get(JobKind.ALIGN, "align-00000000-0000-0000-0000-000000000000").catch((err: ConnectError) => err);
    expect(e).toMatchObject({ code: Code.Unavailable, rawMessage: expect.stringMatching(/^the job queue cannot be reached \(.+\); retry later$/) });
    expect((e as ConnectError).rawMessage).not.toMatch(/maxRetriesPerRequest/);
    // Each connection error is logged once: BullMQ's copy of it is not logged again.
    expect(logged.filter((l) => l.msg === "job queue error" && logged.some((c) => c.msg === "job queue connection error" && String(c.error).endsWith(String(l.error))))).toEqual([]);
    await expect(ex.create(JobKind.ALIGN, spec)).rejects.toMatchObject({ code: Code.Unavailable });
    expect(Date.now() - t).toBeLessThan(3000);
    await until(() => availability.length > 0);
    expect(availability).toEqual([false]);
  });

  it("rides out a restart of the Redis that holds the queue: calls answer UNAVAILABLE meanwhile, and the running job ends in its first run", async () => {
    const { api, worker, keys } = setup();
    // Each side logs the outage (a cluster's lost node included), so an operator sees it, and its end.
    const logged = { api: [] as string[], worker: [] as string[] };
    const logTo = (lines: string[]) => createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line).msg) });
    const ex = api({ logger: logTo(logged.api), availabilityProbeMs: 200 });
    // What the job services' health follows: available, unavailable while down, available again.
    const availability: boolean[] = [];
    const unwatch = ex.watchAvailability((up) => availability.push(up));
    closers.push(async () => unwatch());
    await until(() => availability.length === 1);
    expect(availability).toEqual([true]);
    const held = heldRun();
    worker(held.work, { logger: logTo(logged.worker) });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => held.runs === 1 && (await stateOf(ex, job.id)) === JobState.RUNNING);
    // In a cluster, the node with the queue's slot.
    const holder = redis.nodes ? redis.nodes.find((n) => spawnSync("redis-cli", ["-p", String(n.port), "exists", keys.job(job.id)], { encoding: "utf8" }).stdout.trim() === "1")! : redis;
    await holder.restart(async () => {
      const t = Date.now();
      await expect(ex.get(JobKind.ALIGN, job.id)).rejects.toMatchObject({ code: Code.Unavailable });
      expect(Date.now() - t).toBeLessThan(3000);
      await until(() => availability.at(-1) === false, 3000);
      // The job's last step and its end are written while Redis is down, and wait for it.
      held.resume();
      await new Promise((r) => setTimeout(r, 2500));
    });
    await until(() => availability.at(-1) === true, 20_000);
    expect(availability).toEqual([true, false, true]);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id).catch(() => undefined))?.state === JobState.SUCCEEDED, 20_000);
    expect(held.runs).toBe(1);
    const events = await watchAll(ex, job.id);
    expect(steps(events)).toEqual([1, 2]);
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
    // Once each: every failed reconnection was a line (a cluster's node is back when a connection to it is).
    for (const said of [logged.api, logged.worker]) {
      expect(said.filter((msg) => msg === "job queue connection error")).toHaveLength(1);
      expect(said.filter((msg) => msg === "job queue connection restored")).toHaveLength(1);
    }
  });

  it.skipIf(cluster)("keeps a running job's lock through an outage of 65% of the lock: the job ends in its first run", async () => {
    const { api, worker } = setup();
    const ex = api();
    const held = heldRun();
    worker(held.work, { lockMs: 4000 });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => held.runs === 1 && (await stateOf(ex, job.id)) === JobState.RUNNING);
    // Redis goes 1.25 s into the run: renewed every 400 ms, the lock has at least 3.6 s left;
    // renewed every 1.33 s, as before, it had not been renewed yet and had 2.75 s left, less
    // than the outage with the restart and the client's reconnection.
    await new Promise((r) => setTimeout(r, 1250));
    await redis.restart(() => new Promise((r) => setTimeout(r, 2600)));
    held.resume();
    await until(async () => (await ex.get(JobKind.ALIGN, job.id).catch(() => undefined))?.state === JobState.SUCCEEDED, 20_000);
    expect(held.runs).toBe(1);
    expect(states(await watchAll(ex, job.id))).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
  });

  it("continues the creating RPC's trace on the worker (api -> queue -> worker) and counts queue and steps", async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    const exporter = new InMemorySpanExporter();
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 60_000 });
    const meterProvider = new MeterProvider({ readers: [reader] });
    const meter = meterProvider.getMeter("t");
    const { api, worker } = setup();
    const ex = api({ tracer, meter });
    let stepTrace: string | undefined;
    worker(
      async (ctx) => {
        const s = ctx.tracer.startSpan("train.step");
        stepTrace = s.spanContext().traceId;
        s.end();
        ctx.emit({ case: "step", value: { step: 1, totalSteps: 1 } });
        return { result: ref(1), lineage: [ref(1)] };
      },
      { tracer, meter },
    );
    const rpc = tracer.startSpan("rpc");
    const job = await context.with(trace.setSpan(context.active(), rpc), () => ex.create(JobKind.ALIGN, spec));
    rpc.end();
    await until(async () => (await stateOf(ex, job.id)) === JobState.SUCCEEDED);
    await until(() => exporter.getFinishedSpans().some((s) => s.name === "job align"));
    const spans = exporter.getFinishedSpans();
    const enqueue = spans.find((s) => s.name === "enqueue align")!;
    const jobSpan = spans.find((s) => s.name === "job align")!;
    expect(enqueue.parentSpanContext?.spanId).toBe(rpc.spanContext().spanId);
    expect(jobSpan.parentSpanContext?.spanId).toBe(enqueue.spanContext().spanId);
    expect(jobSpan.spanContext().traceId).toBe(rpc.spanContext().traceId);
    expect(stepTrace).toBe(rpc.spanContext().traceId);
    expect((await ex.get(JobKind.ALIGN, job.id)).traceId).toBe(rpc.spanContext().traceId);
    await reader.forceFlush();
    const metrics = metricExporter.getMetrics().at(-1)!.scopeMetrics[0].metrics;
    const names = metrics.map((m) => m.descriptor.name);
    expect(names).toEqual(expect.arrayContaining(["vaccine.queue.jobs", "vaccine.queue.job.duration", "vaccine.worker.starts", "vaccine.worker.steps", "vaccine.worker.step_rate", "vaccine.jobs.finished"]));
    const queueStates = metrics.find((m) => m.descriptor.name === "vaccine.queue.jobs")!.dataPoints.map((p) => p.attributes["vaccine.queue.state"]);
    expect(queueStates).toEqual(expect.arrayContaining(["waiting", "active", "delayed"]));
    await meterProvider.shutdown();
  });
});
