// The embedded job executor with stand-in work functions: queueing, cancellation, watch, restart.
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { AlwaysOffSampler, BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { CheckpointRefSchema } from "../../gen/vaccine/v1/common_pb.ts";
import { JobKind, JobState, type Job, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { rpcError } from "../../services/platform/errors.ts";
import { createdWithinJobQuota } from "../helpers/errors.ts";
import { createLogger } from "../../services/platform/log.ts";
import type { JobContext, JobExecutor, JobWork } from "../../services/jobs/executor.ts";
import { LocalExecutor } from "../../services/jobs/local-executor.ts";
import { ReadOnlyExecutor } from "../../services/jobs/read-only-executor.ts";
import { JobRecords } from "../../services/jobs/records.ts";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "vaccine-jobs-"));
  dirs.push(d);
  return d;
};
const ref = (n: number) => create(CheckpointRefSchema, { uri: `store://checkpoints/${n}`, digest: "sha256:" + String(n).repeat(64).slice(0, 64) });
const spec = { case: "align" as const, value: create(AlignSpecSchema, {}) };
const mapError = (err: unknown) => (err instanceof ConnectError ? err : rpcError(Code.Internal, "INTERNAL", String(err)));

/** A work function the test drives by hand: resolves when released, or stops when signalled. */
function controllable() {
  const started: JobContext[] = [];
  const releases = new Map<string, (r: { result: ReturnType<typeof ref>; lineage: ReturnType<typeof ref>[] }) => void>();
  const work: JobWork = (ctx) =>
    new Promise((resolve) => {
      started.push(ctx);
      releases.set(ctx.job.id, resolve);
      ctx.signal.addEventListener("abort", () => {
        ctx.setTrainingState(ref(7));
        resolve(undefined);
      });
    });
  return { work, started, release: (id: string, n = 1) => releases.get(id)!({ result: ref(n), lineage: [ref(0), ref(n)] }) };
}

const tick = () => new Promise((r) => setTimeout(r, 5));
async function until(cond: () => boolean | Promise<boolean>) {
  for (let i = 0; i < 400 && !(await cond()); i++) await tick();
  expect(await cond()).toBe(true);
}
async function collect(it: AsyncIterable<JobEvent>) {
  const out: JobEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}
const states = (events: JobEvent[]) =>
  events.flatMap((e) => (e.event.case === "stateChange" ? [JobState[e.event.value.to]] : []));

describe("LocalExecutor", () => {
  it("runs one job at a time by default and queues the rest", async () => {
    const c = controllable();
    const ex = new LocalExecutor({ dir: tempDir(), work: { [JobKind.ALIGN]: c.work }, mapError });
    const a = await ex.create(JobKind.ALIGN, spec);
    const b = await ex.create(JobKind.ALIGN, spec);
    await until(() => c.started.length === 1);
    expect((await ex.get(JobKind.ALIGN, a.id)).state).toBe(JobState.RUNNING);
    expect((await ex.get(JobKind.ALIGN, b.id)).state).toBe(JobState.QUEUED);
    c.release(a.id, 1);
    await until(() => c.started.length === 2);
    expect(await ex.get(JobKind.ALIGN, a.id)).toMatchObject({ state: JobState.SUCCEEDED, result: { uri: "store://checkpoints/1" } });
    expect((await ex.get(JobKind.ALIGN, a.id)).lineage.map((r) => r.uri)).toEqual(["store://checkpoints/0", "store://checkpoints/1"]);
    c.release(b.id, 2);
    await until(async () => (await ex.get(JobKind.ALIGN, b.id)).state === JobState.SUCCEEDED);
  });

  it("checks a tenant's job quota with the creation: concurrent creates never pass it; ended jobs and other tenants' do not count", async () => {
    const c = controllable();
    const ex = new LocalExecutor({ dir: tempDir(), work: { [JobKind.ALIGN]: c.work }, mapError });
    const tries = await Promise.allSettled(Array.from({ length: 5 }, () => ex.create(JobKind.ALIGN, spec, "team-a", 2)));
    const created = createdWithinJobQuota(tries, "team-a", 2);
    expect(created).toHaveLength(2);
    // Jobs of every kind count; another tenant's do not.
    await expect(ex.create(JobKind.FINE_TUNE, spec, "team-a", 2)).rejects.toThrow(/quota is 2/);
    const other = await ex.create(JobKind.ALIGN, spec, "team-b", 2);
    // A cancelled job frees its slot.
    await until(() => c.started.length === 1);
    const queued = created.find((j) => j.id !== c.started[0].job.id)!;
    expect((await ex.cancel(JobKind.ALIGN, queued.id)).state).toBe(JobState.CANCELLED);
    const again = await ex.create(JobKind.ALIGN, spec, "team-a", 2);
    for (const j of [again, other, c.started[0].job]) await ex.cancel(JobKind.ALIGN, j.id);
    await ex.shutdown();
  });

  it("answers the unfinished jobs of every kind, of one tenant or all, without ended ones; a read-only executor reads the same from disk", async () => {
    const c = controllable();
    const dir = tempDir();
    const ex = new LocalExecutor({ dir, work: { [JobKind.ALIGN]: c.work, [JobKind.FINE_TUNE]: c.work }, mapError });
    const a = await ex.create(JobKind.ALIGN, spec, "team-a");
    const b = await ex.create(JobKind.FINE_TUNE, spec, "team-b");
    const cancelled = await ex.create(JobKind.ALIGN, spec, "team-a");
    await until(() => c.started.length === 1);
    await ex.cancel(JobKind.ALIGN, cancelled.id);
    const ids = async (x: JobExecutor, tenant?: string) => (await x.unfinished(tenant)).map((j) => j.id).sort();
    expect(await ids(ex)).toEqual([a.id, b.id].sort());
    expect(await ids(ex, "team-a")).toEqual([a.id]);
    const readOnly = new ReadOnlyExecutor(dir, { pid: 1, host: "elsewhere", since: "" });
    expect(await ids(readOnly)).toEqual([a.id, b.id].sort());
    expect(await ids(readOnly, "team-b")).toEqual([b.id]);
    c.release(a.id);
    await until(async () => (await ex.get(JobKind.ALIGN, a.id)).state === JobState.SUCCEEDED);
    expect(await ids(ex)).toEqual([b.id]);
    expect(await ids(readOnly)).toEqual([b.id]);
    await ex.cancel(JobKind.FINE_TUNE, b.id);
    await ex.shutdown();
  });

  it("makes one job of creates with one request_id, run once; the same id with another spec is ALREADY_EXISTS", async () => {
    const c = controllable();
    const ex = new LocalExecutor({ dir: tempDir(), work: { [JobKind.ALIGN]: c.work }, mapError });
    const jobs = await Promise.all([1, 2, 3].map(() => ex.create(JobKind.ALIGN, spec, "team-a", 0, "r1")));
    const [id] = new Set(jobs.map((j) => j.id));
    expect(jobs.every((j) => j.id === id && j.requestId === "r1")).toBe(true);
    await until(() => c.started.length === 1);
    c.release(id);
    await until(async () => (await ex.get(JobKind.ALIGN, id)).state === JobState.SUCCEEDED);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.started).toHaveLength(1);
    expect(states(await collect(ex.watch(JobKind.ALIGN, id, new AbortController().signal)))).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
    const other = { case: "align" as const, value: create(AlignSpecSchema, { lora: { rank: 2 } }) };
    await expect(ex.create(JobKind.ALIGN, other, "team-a", 0, "r1")).rejects.toMatchObject({ code: Code.AlreadyExists });
    // Another tenant's request_id is its own.
    expect((await ex.create(JobKind.ALIGN, other, "team-b", 0, "r1")).id).not.toBe(id);
    await ex.shutdown();
  });

  it("cancels a queued job at once and a running one after its step, with a Status and ErrorInfo", async () => {
    const c = controllable();
    const ex = new LocalExecutor({ dir: tempDir(), work: { [JobKind.ALIGN]: c.work }, mapError });
    const a = await ex.create(JobKind.ALIGN, spec);
    const b = await ex.create(JobKind.ALIGN, spec);
    await until(() => c.started.length === 1);
    // Each answer carries the sequence of the event its change wrote.
    expect(await ex.cancel(JobKind.ALIGN, b.id)).toMatchObject({ state: JobState.CANCELLED, lastSequence: 2 });
    expect(await ex.cancel(JobKind.ALIGN, a.id)).toMatchObject({ state: JobState.CANCELLING, lastSequence: 3 });
    const events = await collect(ex.watch(JobKind.ALIGN, a.id, new AbortController().signal));
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]);
    const job = await ex.get(JobKind.ALIGN, a.id);
    expect(job.error?.code).toBe(Code.Canceled);
    expect(anyUnpack(job.error!.details[0], ErrorInfoSchema)?.reason).toBe("JOB_CANCELLED");
    // Cancelling a final job changes nothing; b never started.
    expect((await ex.cancel(JobKind.ALIGN, a.id)).state).toBe(JobState.CANCELLED);
    expect(c.started).toHaveLength(1);
  });

  it("gives a late watcher the whole history, numbered without gaps, and ends with the job", async () => {
    const ex = new LocalExecutor({
      dir: tempDir(),
      mapError,
      work: {
        [JobKind.ALIGN]: async (ctx) => {
          for (let step = 1; step <= 3; step++) ctx.emit({ case: "step", value: { step, totalSteps: 3, loss: 1 / step } });
          return { result: ref(3), lineage: [ref(3)] };
        },
      },
    });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    const events = await collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal));
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(events.filter((e) => e.event.case === "step")).toHaveLength(3);
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
    // Resumed after the second event: the rest only.
    const resumed = await collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal, 2));
    expect(resumed.map((e) => e.sequence)).toEqual(events.slice(2).map((e) => e.sequence));
  });

  it("answers each job with its last event's sequence: a watch after it gets only what happens next, also after a restart", async () => {
    const dir = tempDir();
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    const work: JobWork = async (ctx) => {
      ctx.emit({ case: "step", value: { step: 1, totalSteps: 2, loss: 1 } });
      await gate;
      ctx.emit({ case: "step", value: { step: 2, totalSteps: 2, loss: 0.5 } });
      return { result: ref(2), lineage: [ref(2)] };
    };
    const ex = new LocalExecutor({ dir, mapError, work: { [JobKind.ALIGN]: work } });
    const job = await ex.create(JobKind.ALIGN, spec);
    expect(job.lastSequence).toBe(1);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).lastSequence === 3);
    const read = await ex.get(JobKind.ALIGN, job.id);
    const next = collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal, read.lastSequence));
    go();
    const all = await collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal));
    expect(all.map((e) => e.event.case)).toEqual(["stateChange", "stateChange", "step", "step", "stateChange"]);
    expect(await next).toEqual(all.slice(3));
    expect((await ex.list(JobKind.ALIGN, 10, "")).jobs.map((j) => j.lastSequence)).toEqual([5]);
    // From the records on disk: the record is saved before its change's event, so the events count.
    await ex.shutdown();
    const again = new LocalExecutor({ dir, mapError, work: { [JobKind.ALIGN]: work } });
    expect((await again.get(JobKind.ALIGN, job.id)).lastSequence).toBe(5);
    await again.shutdown();
  });

  it("ends a watch of a running job with the job, even one resumed after more events than the job has", async () => {
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    const ex = new LocalExecutor({ dir: tempDir(), mapError, work: { [JobKind.ALIGN]: async () => (await gate, { result: ref(1), lineage: [ref(1)] }) } });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.RUNNING);
    const ahead = collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal, 2 ** 31 - 1));
    go();
    expect(await ahead).toEqual([]);
    expect((await ex.get(JobKind.ALIGN, job.id)).state).toBe(JobState.SUCCEEDED);
  });

  it("counts queued and running jobs in a gauge and finished ones by state", async () => {
    const reader = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const metricReader = new PeriodicExportingMetricReader({ exporter: reader, exportIntervalMillis: 60_000 });
    const meterProvider = new MeterProvider({ readers: [metricReader] });
    const c = controllable();
    const ex = new LocalExecutor({ dir: tempDir(), work: { [JobKind.ALIGN]: c.work }, mapError, meter: meterProvider.getMeter("t") });
    const a = await ex.create(JobKind.ALIGN, spec);
    await ex.create(JobKind.ALIGN, spec);
    await until(() => c.started.length === 1);
    c.release(a.id);
    await until(() => c.started.length === 2);
    await metricReader.forceFlush();
    const metrics = reader.getMetrics().at(-1)!.scopeMetrics[0].metrics;
    const points = (name: string) =>
      metrics.find((m) => m.descriptor.name === name)!.dataPoints.map((p) => [p.attributes["vaccine.job.state"], p.value]);
    expect(points("vaccine.jobs")).toEqual(expect.arrayContaining([["running", 1], ["queued", 0]]));
    expect(points("vaccine.jobs.finished")).toEqual([["succeeded", 1]]);
    await meterProvider.shutdown();
  });

  it("records a failure as FAILED with the mapped error", async () => {
    const ex = new LocalExecutor({
      dir: tempDir(),
      mapError,
      work: { [JobKind.ALIGN]: async () => Promise.reject(rpcError(Code.FailedPrecondition, "LOSS_NOT_FINITE", "the loss at step 3 is NaN")) },
    });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.FAILED);
    const failed = await ex.get(JobKind.ALIGN, job.id);
    expect(failed.error?.message).toContain("NaN");
    expect(anyUnpack(failed.error!.details[0], ErrorInfoSchema)?.reason).toBe("LOSS_NOT_FINITE");
    expect(failed.endTime).toBeDefined();
  });

  it("stops a running job at shutdown and resumes it from its training checkpoint after a restart, logging each run", async () => {
    const dir = tempDir();
    const first = controllable();
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => void lines.push(JSON.parse(s)) });
    const ex1 = new LocalExecutor({ dir, work: { [JobKind.ALIGN]: first.work }, mapError, logger });
    const job = await ex1.create(JobKind.ALIGN, spec);
    await until(() => first.started.length === 1);
    await ex1.shutdown();
    expect((await ex1.get(JobKind.ALIGN, job.id)).state).toBe(JobState.QUEUED);
    await expect(ex1.create(JobKind.ALIGN, spec)).rejects.toThrow(/shutting down/);

    let resumedFrom: string | undefined;
    const ex2 = new LocalExecutor({
      dir,
      mapError,
      logger,
      work: {
        [JobKind.ALIGN]: async (ctx) => {
          resumedFrom = ctx.job.trainingState?.uri;
          return { result: ref(9), lineage: [ref(9)] };
        },
      },
    });
    await until(async () => (await ex2.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    expect(resumedFrom).toBe("store://checkpoints/7");
    expect(lines.filter((l) => String(l.msg).startsWith("job ")).map((l) => [l.msg, l.outcome ?? l.resumes_from ?? null])).toEqual([
      ["job started", null],
      ["job run ended", "requeued"],
      ["job started", "store://checkpoints/7"],
      ["job run ended", "succeeded"],
    ]);
    const events = await collect(ex2.watch(JobKind.ALIGN, job.id, new AbortController().signal));
    expect(states(events)).toEqual(["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]);
  });

  it("a jobs folder that cannot be written: Create is refused and keeps nothing; a running job goes on and its files are written whole again later", async () => {
    const root = tempDir();
    const dir = join(root, "jobs");
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => void lines.push(JSON.parse(s)) });
    const c = controllable();
    const ex = new LocalExecutor({ dir, work: { [JobKind.ALIGN]: c.work }, mapError, logger });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(() => c.started.length === 1);
    // The folder becomes a file: every write fails (as on a full disk, as root too).
    renameSync(dir, join(root, "away"));
    writeFileSync(dir, "");
    const refused = await ex.create(JobKind.ALIGN, spec).then(() => undefined, (err: ConnectError) => err);
    expect(refused?.code).toBe(Code.Internal);
    expect(refused!.findDetails(ErrorInfoSchema)[0]?.reason).toBe("JOB_RECORD_WRITE_FAILED");
    expect((await ex.list(JobKind.ALIGN, 10, "")).jobs.map((j) => j.id)).toEqual([job.id]);
    for (let step = 1; step <= 3; step++) c.started[0].emit({ case: "step", value: { step, totalSteps: 4, loss: 1 / step } });
    expect(lines.filter((l) => l.msg === "could not write the job's record; it is kept in memory and written again with its next change")).toHaveLength(1);
    // The folder is back: the next change writes the record and every event.
    rmSync(dir);
    renameSync(join(root, "away"), dir);
    c.started[0].emit({ case: "step", value: { step: 4, totalSteps: 4, loss: 0.2 } });
    c.release(job.id);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    const live = await collect(ex.watch(JobKind.ALIGN, job.id, new AbortController().signal));
    await ex.shutdown();
    const again = new LocalExecutor({ dir, mapError, work: {} });
    const reread = await collect(again.watch(JobKind.ALIGN, job.id, new AbortController().signal));
    expect(reread).toEqual(live);
    expect(reread.filter((e) => e.event.case === "step")).toHaveLength(4);
    expect((await again.get(JobKind.ALIGN, job.id)).state).toBe(JobState.SUCCEEDED);
    expect(readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([]);
    await again.shutdown();
  });

  it("starts past a damaged record (logged and left out), mends a torn events file, and ends a job cancelled mid-step as CANCELLED", async () => {
    const dir = tempDir();
    const c = controllable();
    const ex = new LocalExecutor({ dir, work: { [JobKind.ALIGN]: c.work }, mapError });
    const [damaged, torn, cancelling] = [await ex.create(JobKind.ALIGN, spec), await ex.create(JobKind.ALIGN, spec), await ex.create(JobKind.ALIGN, spec)];
    await until(() => c.started.length === 1);
    await ex.shutdown();
    // As a process killed at these moments leaves them: half a record, half an event line, a cancel not yet acted on.
    writeFileSync(join(dir, `${damaged.id}.json`), readFileSync(join(dir, `${damaged.id}.json`), "utf8").slice(0, 100));
    appendFileSync(join(dir, `${torn.id}.events.jsonl`), '{"jobId":"' + torn.id);
    const record = JSON.parse(readFileSync(join(dir, `${cancelling.id}.json`), "utf8"));
    writeFileSync(join(dir, `${cancelling.id}.json`), JSON.stringify({ ...record, job: { ...record.job, state: "JOB_STATE_CANCELLING" } }));

    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => void lines.push(JSON.parse(s)) });
    const second = controllable();
    const ex2 = new LocalExecutor({ dir, work: { [JobKind.ALIGN]: second.work }, mapError, logger });
    expect(lines.find((l) => l.msg === "job record unreadable: left out (its files stay in the jobs folder)")).toMatchObject({ job: damaged.id });
    await expect(ex2.get(JobKind.ALIGN, damaged.id)).rejects.toMatchObject({ code: Code.NotFound });
    expect((await ex2.get(JobKind.ALIGN, cancelling.id)).state).toBe(JobState.CANCELLED);
    // The torn line is gone from the file, so the events appended since (it ran, then was
    // stopped at shutdown) are read back.
    expect(readFileSync(join(dir, `${torn.id}.events.jsonl`), "utf8")).not.toContain('{"jobId":"' + torn.id + "\n");
    await until(() => second.started.length >= 1);
    await ex2.shutdown();
    const records = new JobRecords(dir);
    expect(records.load(torn.id)).toMatchObject({ torn: false });
    expect(states(records.load(torn.id)!.events)).toEqual(["QUEUED", "RUNNING", "QUEUED"]);
    expect(states(records.load(cancelling.id)!.events).at(-1)).toBe("CANCELLED");
  });

  it("lists newest first in pages, and answers NOT_FOUND and bad tokens clearly", async () => {
    const ex = new LocalExecutor({ dir: tempDir(), work: {}, maxRunning: 0, mapError });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await ex.create(JobKind.ALIGN, spec)).id);
      await tick();
    }
    await ex.create(JobKind.FINE_TUNE, { case: "fineTune", value: create(AlignSpecSchema, {}) as never });
    const page1 = await ex.list(JobKind.ALIGN, 2, "");
    // A job created between pages does not push one already shown onto the next page.
    await tick();
    await ex.create(JobKind.ALIGN, spec);
    const page2 = await ex.list(JobKind.ALIGN, 2, page1.nextPageToken);
    const page3 = await ex.list(JobKind.ALIGN, 2, page2.nextPageToken);
    expect([...page1.jobs, ...page2.jobs, ...page3.jobs].map((j: Job) => j.id)).toEqual([...ids].reverse());
    expect(page3.nextPageToken).toBe("");
    await expect(ex.list(JobKind.ALIGN, 2, "bm90LWEtbnVtYmVy")).rejects.toThrow(/page_token/);
    await expect(ex.list(JobKind.ALIGN, 2, Buffer.from("2").toString("base64url"))).rejects.toThrow(/page_token/); // an offset
    await expect(ex.list(JobKind.FINE_TUNE, 2, page1.nextPageToken)).rejects.toThrow(/page_token/); // another kind's
    await expect(ex.get(JobKind.ALIGN, "align-00000000-0000-0000-0000-000000000000")).rejects.toThrow(/not found/);
    // A fine-tuning job is not found through the alignment API.
    const ft = (await ex.list(JobKind.FINE_TUNE, 10, "")).jobs[0];
    await expect(ex.get(JobKind.ALIGN, ft.id)).rejects.toThrow(ConnectError);
  });

  it("gives each job its own trace, linked to the span that created it", async () => {
    // What NodeTracerProvider.register() installs in a service process.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const tracer = provider.getTracer("test");
    let stepParent: string | undefined;
    const ex = new LocalExecutor({
      dir: tempDir(),
      mapError,
      tracer,
      work: {
        [JobKind.ALIGN]: async (ctx) => {
          const s = ctx.tracer.startSpan("step");
          stepParent = s.spanContext().traceId;
          s.end();
          return { result: ref(1), lineage: [ref(1)] };
        },
      },
    });
    const rpc = tracer.startSpan("rpc");
    const job = await context.with(trace.setSpan(context.active(), rpc), () => ex.create(JobKind.ALIGN, spec));
    rpc.end();
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    const jobSpan = exporter.getFinishedSpans().find((s) => s.name === "job align")!;
    expect(jobSpan.links[0].context.spanId).toBe(rpc.spanContext().spanId);
    expect(jobSpan.spanContext().traceId).not.toBe(rpc.spanContext().traceId);
    expect((await ex.get(JobKind.ALIGN, job.id)).traceId).toBe(jobSpan.spanContext().traceId);
    expect(stepParent).toBe(jobSpan.spanContext().traceId);
  });

  it("continues a job's trace after a restart: the next run's span is a child of the first run's, and trace_id stays", async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    const exporter = new InMemorySpanExporter();
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    const dir = tempDir();
    const first = controllable();
    const ex1 = new LocalExecutor({ dir, tracer, mapError, work: { [JobKind.ALIGN]: first.work } });
    const job = await ex1.create(JobKind.ALIGN, spec);
    await until(() => first.started.length === 1);
    await ex1.shutdown();
    const ex2 = new LocalExecutor({ dir, tracer, mapError, work: { [JobKind.ALIGN]: async () => ({ result: ref(9), lineage: [ref(9)] }) } });
    await until(async () => (await ex2.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    const [run1, run2] = exporter.getFinishedSpans().filter((s) => s.name === "job align");
    expect(run2.spanContext().traceId).toBe(run1.spanContext().traceId);
    expect(run2.parentSpanContext?.spanId).toBe(run1.spanContext().spanId);
    expect((await ex2.get(JobKind.ALIGN, job.id)).traceId).toBe(run1.spanContext().traceId);
  });

  it("keeps the first run's sampling decision: a job not sampled stays unsampled after a restart", async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    const exporter = new InMemorySpanExporter();
    const dir = tempDir();
    const first = controllable();
    const unsampled = new BasicTracerProvider({ sampler: new AlwaysOffSampler(), spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    const ex1 = new LocalExecutor({ dir, tracer: unsampled, mapError, work: { [JobKind.ALIGN]: first.work } });
    const job = await ex1.create(JobKind.ALIGN, spec);
    await until(() => first.started.length === 1);
    await ex1.shutdown();
    // The next process samples what its parent says (the SDK's default, parent-based).
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test");
    const ex2 = new LocalExecutor({ dir, tracer, mapError, work: { [JobKind.ALIGN]: async () => ({ result: ref(9), lineage: [ref(9)] }) } });
    await until(async () => (await ex2.get(JobKind.ALIGN, job.id)).state === JobState.SUCCEEDED);
    expect(exporter.getFinishedSpans().filter((s) => s.name === "job align")).toEqual([]);
  });

  it("logs a failed job as a pino line carrying the job's trace_id", async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    const tracer = new BasicTracerProvider().getTracer("test");
    const lines: Record<string, unknown>[] = [];
    const ex = new LocalExecutor({
      dir: tempDir(),
      mapError,
      tracer,
      logger: createLogger("info", { write: (s: string) => void lines.push(JSON.parse(s)) }),
      work: { [JobKind.ALIGN]: async () => Promise.reject(new Error("backend aborted")) },
    });
    const job = await ex.create(JobKind.ALIGN, spec);
    await until(async () => (await ex.get(JobKind.ALIGN, job.id)).state === JobState.FAILED);
    const failed = await ex.get(JobKind.ALIGN, job.id);
    await until(() => lines.length === 3);
    expect(lines).toEqual([
      expect.objectContaining({ level: "info", msg: "job started", job: job.id, trace_id: failed.traceId }),
      expect.objectContaining({ level: "warn", msg: "job failed", job: job.id, code: "Internal", error: "Error: backend aborted", trace_id: failed.traceId }),
      expect.objectContaining({ level: "info", msg: "job run ended", job: job.id, outcome: "failed", step: 0, trace_id: failed.traceId }),
    ]);
    expect(lines[1].span_id).toMatch(/^[0-9a-f]{16}$/);
  });
});
