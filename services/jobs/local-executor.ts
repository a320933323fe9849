/**
 * The embedded job executor: a bounded queue of training jobs with durable records, events kept
 * for late watchers, cancellation, graceful shutdown and resume after a restart.
 *
 * Life cycle: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, with CANCELLING while a
 * running job finishes its step. On shutdown a running job is asked to stop after its
 * step (its work function writes a training checkpoint) and goes back to QUEUED; on the
 * next start every QUEUED or RUNNING record is queued again and resumes from its last
 * training checkpoint.
 */
import { clone, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { context, isSpanContextValid, ROOT_CONTEXT, SpanKind, trace, type Counter, type Meter, type Span, type Tracer } from "@opentelemetry/api";
import { CheckpointRefSchema } from "../../gen/vaccine/v1/common_pb.ts";
import {
  JobEventSchema,
  JobKind,
  JobSchema,
  JobState,
  LogSeverity,
  type Job,
  type JobEvent,
} from "../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError, shuttingDown, toStatus } from "../platform/errors.ts";
import { silentLogger, type Logger } from "../platform/log.ts";
import { SCOPE } from "../platform/telemetry.ts";
import { markRunFailed } from "./telemetry.ts";
import { cancelledError, FINAL, JOB_METRICS, type ErrorMapper, type JobContext, type JobEventInit, type JobExecutor, type JobSpec, type JobWork, type StopReason, unfinishedOf, visibleTo } from "./executor.ts";
import { jobQuotaExceeded } from "../common/quotas.ts";
import { JobRecords, type TraceLink } from "./records.ts";
import { pageOf } from "./job-pages.ts";
import { jobNotFound, KIND_NAME, newJob, sameRequest } from "./new-job.ts";

export interface LocalExecutorOptions {
  /** Folder of the durable job records and event logs. */
  dir: string;
  work: Partial<Record<JobKind, JobWork>>;
  mapError: ErrorMapper;
  maxRunning?: number;
  tracer?: Tracer;
  /** For the job gauges and the finished-jobs counter (see JOB_METRICS). */
  meter?: Meter;
  logger?: Logger;
  /** The jobs folder's lock (jobs-dir-lock.ts), released once running jobs have stopped at shutdown. */
  lock?: { release(): void };
}


interface Entry {
  job: Job;
  link?: TraceLink;
  firstRun?: TraceLink;
  events: JobEvent[];
  wake: Set<() => void>;
  abort?: AbortController;
  done?: Promise<void>;
  /** A write of its record or events failed: the next write replaces both whole. */
  unsaved?: boolean;
}

export class LocalExecutor implements JobExecutor {
  private readonly records: JobRecords;
  private readonly entries = new Map<string, Entry>();
  private readonly queue: string[] = [];
  private running = 0;
  private stopping = false;
  private readonly maxRunning: number;
  private readonly tracer: Tracer;
  private readonly logger: Logger;
  private readonly finished?: Counter;

  constructor(private readonly options: LocalExecutorOptions) {
    this.records = new JobRecords(options.dir);
    this.maxRunning = options.maxRunning ?? 1;
    this.tracer = options.tracer ?? trace.getTracer(SCOPE);
    this.logger = options.logger ?? silentLogger;
    if (options.meter) {
      this.finished = options.meter.createCounter(JOB_METRICS.finished, { description: "Jobs that reached a final state" });
      options.meter.createObservableGauge(JOB_METRICS.jobs, { description: "Jobs queued and running in this process" }).addCallback((result) => {
        for (const kind of [JobKind.ALIGN, JobKind.FINE_TUNE]) {
          for (const state of [JobState.QUEUED, JobState.RUNNING]) {
            const count = [...this.entries.values()].filter((e) => e.job.kind === kind && e.job.state === state).length;
            result.observe(count, { "vaccine.job.kind": KIND_NAME[kind], "vaccine.job.state": JobState[state].toLowerCase() });
          }
        }
      });
    }
    // Records from an earlier process: unfinished ones are queued again, oldest first.
    const unreadable = (id: string, err: Error) =>
      this.logger.error({ job: id, dir: options.dir, err: err.message }, "job record unreadable: left out (its files stay in the jobs folder)");
    const loaded = this.records.loadAll(unreadable).sort((a, b) => Number(a.job.createTime!.seconds - b.job.createTime!.seconds));
    for (const { job, link, firstRun, events, torn } of loaded) {
      const entry: Entry = { job, link, firstRun, events, wake: new Set(), unsaved: torn };
      this.entries.set(job.id, entry);
      if (job.state === JobState.CANCELLING) {
        // Cancelled while it ran: the process stopped before the step ended, so it ends now.
        this.finish(entry, JobState.CANCELLED, cancelledError());
      } else if (!FINAL.has(job.state)) {
        if (job.state !== JobState.QUEUED) this.transition(entry, JobState.QUEUED);
        this.log(entry, job.trainingState ? `resuming from ${job.trainingState.uri} after a restart` : "queued again after a restart");
        this.queue.push(job.id);
      } else if (torn) {
        this.save(entry);
      }
    }
    queueMicrotask(() => this.schedule());
  }

  async create(kind: JobKind, spec: JobSpec, tenant = "", maxActive = 0, requestId = ""): Promise<Job> {
    const job = newJob(kind, spec, tenant, requestId);
    const prior = this.entries.get(job.id);
    if (prior) return clone(JobSchema, sameRequest(prior.job, spec));
    if (this.stopping) throw shuttingDown();
    // Counted and created with no await in between: concurrent creates cannot both pass.
    const active = maxActive > 0 ? this.activeCount(tenant) : 0;
    if (maxActive > 0 && active >= maxActive) throw jobQuotaExceeded(tenant, maxActive, active);
    const caller = trace.getSpan(context.active())?.spanContext();
    const entry: Entry = { job, link: caller && { traceId: caller.traceId, spanId: caller.spanId }, events: [], wake: new Set() };
    // Written before it is known: a job whose record cannot be written is refused, not kept in memory only.
    try {
      this.records.save(job, entry.link);
    } catch (err) {
      throw recordWriteFailed(err);
    }
    this.entries.set(job.id, entry);
    this.emit(entry, { case: "stateChange", value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED } });
    this.queue.push(job.id);
    // Scheduled after this call returns, so the caller sees the job as created: QUEUED.
    setImmediate(() => this.schedule());
    return clone(JobSchema, job);
  }

  /** A snapshot: the live record keeps changing while a response is serialized. */
  async get(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    return clone(JobSchema, this.entry(kind, id, tenant).job);
  }

  async list(kind: JobKind, pageSize: number, pageToken: string, tenant?: string): Promise<{ jobs: Job[]; nextPageToken: string }> {
    const mine = [...this.entries.values()].map((e) => e.job).filter((j) => j.kind === kind && visibleTo(j, tenant));
    const page = pageOf(mine, kind, pageSize, pageToken);
    return { ...page, jobs: page.jobs.map((j) => clone(JobSchema, j)) };
  }

  async unfinished(tenant?: string): Promise<Job[]> {
    return unfinishedOf([...this.entries.values()].map((e) => e.job), tenant).map((j) => clone(JobSchema, j));
  }

  async cancel(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    const entry = this.entry(kind, id, tenant);
    const { job } = entry;
    if (job.state === JobState.QUEUED) {
      this.queue.splice(this.queue.indexOf(id), 1);
      this.finish(entry, JobState.CANCELLED, cancelledError());
    } else if (job.state === JobState.RUNNING) {
      this.transition(entry, JobState.CANCELLING);
      entry.abort?.abort("cancel" satisfies StopReason);
    }
    return clone(JobSchema, job);
  }

  async *watch(kind: JobKind, id: string, signal: AbortSignal, afterSequence = 0, tenant?: string): AsyncGenerator<JobEvent> {
    const entry = this.entry(kind, id, tenant);
    // Sequence n is events[n - 1].
    let sent = afterSequence;
    let wake: () => void = () => {};
    const waker = () => wake();
    entry.wake.add(waker);
    signal.addEventListener("abort", waker);
    try {
      for (;;) {
        while (sent < entry.events.length) yield entry.events[sent++];
        if (FINAL.has(entry.job.state) || signal.aborted) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
          if (sent < entry.events.length || signal.aborted) resolve();
        });
      }
    } finally {
      entry.wake.delete(waker);
      signal.removeEventListener("abort", waker);
    }
  }

  /** The tenant's jobs of every kind not final: what its job quota counts. */
  private activeCount(tenant: string): number {
    return [...this.entries.values()].filter((e) => e.job.tenant === tenant && !FINAL.has(e.job.state)).length;
  }

  async shutdown(): Promise<void> {
    this.stopping = true;
    const running = [...this.entries.values()].filter((e) => e.abort);
    for (const e of running) e.abort!.abort("shutdown" satisfies StopReason);
    await Promise.all(running.map((e) => e.done));
    this.options.lock?.release();
  }

  /** Another tenant's job is missing to the caller, exactly as an unknown id. */
  private entry(kind: JobKind, id: string, tenant?: string): Entry {
    const entry = this.entries.get(id);
    if (!entry || entry.job.kind !== kind || !visibleTo(entry.job, tenant)) throw jobNotFound(id);
    return entry;
  }

  private schedule(): void {
    while (!this.stopping && this.running < this.maxRunning && this.queue.length > 0) {
      const entry = this.entries.get(this.queue.shift()!)!;
      this.running++;
      entry.done = this.run(entry).finally(() => {
        this.running--;
        entry.abort = undefined;
        this.schedule();
      });
    }
  }

  private async run(entry: Entry): Promise<void> {
    const { job } = entry;
    const work = this.options.work[job.kind];
    entry.abort = new AbortController();
    job.startTime ??= timestampNow();
    this.transition(entry, JobState.RUNNING);
    // The job's trace is its own (a job outlives the RPC that created it), linked to that RPC.
    // A run after a restart is a child of the first run's span, so trace_id finds every run.
    const first = entry.firstRun;
    const span = this.tracer.startSpan(
      `job ${KIND_NAME[job.kind]}`,
      {
        kind: SpanKind.INTERNAL,
        root: !first,
        attributes: { "vaccine.job.id": job.id, "vaccine.job.kind": KIND_NAME[job.kind] },
        links: entry.link ? [{ context: { traceId: entry.link.traceId, spanId: entry.link.spanId, traceFlags: 1, isRemote: true } }] : [],
      },
      first ? trace.setSpanContext(ROOT_CONTEXT, { traceFlags: 1, ...first, isRemote: true }) : ROOT_CONTEXT,
    );
    const { traceId, spanId, traceFlags } = span.spanContext();
    // Its sampling decision too: a later run is recorded only when the first was.
    if (!first && isSpanContextValid(span.spanContext())) entry.firstRun = { traceId, spanId, traceFlags };
    job.traceId = traceId;
    this.save(entry);
    // As a queue worker logs its runs: which job, from where, and (below) how the run ended.
    const inSpan = (fn: () => void) => context.with(trace.setSpan(ROOT_CONTEXT, span), fn);
    const t0 = performance.now();
    inSpan(() => this.logger.info({ job: job.id, ...(job.trainingState && { resumes_from: job.trainingState.uri }) }, "job started"));
    const ended = (outcome: string) =>
      inSpan(() => this.logger.info({ job: job.id, outcome, step: job.progress?.step ?? 0, seconds: Math.round((performance.now() - t0) / 100) / 10 }, "job run ended"));
    const ctx: JobContext = {
      job,
      signal: entry.abort.signal,
      tracer: this.tracer,
      emit: (event) => this.emit(entry, event),
      progress: (p) => {
        Object.assign(job.progress!, p);
      },
      setTrainingState: (ref) => {
        job.trainingState = create(CheckpointRefSchema, ref);
        this.save(entry);
      },
    };
    try {
      if (!work) throw rpcError(Code.Unimplemented, "NOT_IMPLEMENTED", `no work function for ${JobKind[job.kind]} jobs`);
      const done = await context.with(trace.setSpan(ROOT_CONTEXT, span), () => work(ctx));
      const reason = entry.abort.signal.reason as StopReason | undefined;
      if (done) {
        job.result = create(CheckpointRefSchema, done.result);
        job.lineage = done.lineage.map((r) => create(CheckpointRefSchema, r));
        this.finish(entry, JobState.SUCCEEDED);
        ended("succeeded");
      } else if (reason === "cancel") {
        this.finish(entry, JobState.CANCELLED, cancelledError());
        ended("cancelled");
      } else if (reason === "shutdown") {
        this.transition(entry, JobState.QUEUED);
        this.log(entry, "stopped at shutdown; resumes from its training checkpoint on the next start");
        span.addEvent("stopped at shutdown", { "vaccine.step": job.progress?.step ?? 0 });
        ended("requeued");
      } else {
        throw new Error("the job's work stopped without a result and without being asked to");
      }
      endSpan(span);
    } catch (err) {
      const error = this.options.mapError(err);
      // Logged in the job's trace, so the line leads to the failed step.
      inSpan(() => this.logger.warn({ job: job.id, code: Code[error.code], error: error.rawMessage }, "job failed"));
      this.finish(entry, JobState.FAILED, error);
      ended("failed");
      endSpan(span, error);
    }
  }

  private finish(entry: Entry, state: JobState, error?: ConnectError): void {
    entry.job.endTime = timestampNow();
    this.finished?.add(1, { "vaccine.job.kind": KIND_NAME[entry.job.kind], "vaccine.job.state": JobState[state].toLowerCase() });
    if (error) entry.job.error = toStatus(error);
    this.transition(entry, state, error);
  }

  private transition(entry: Entry, to: JobState, error?: ConnectError): void {
    const from = entry.job.state;
    entry.job.state = to;
    this.save(entry);
    this.emit(entry, { case: "stateChange", value: { from, to, error: error && toStatus(error) } });
  }

  private log(entry: Entry, message: string): void {
    this.emit(entry, { case: "log", value: { severity: LogSeverity.INFO, message } });
  }

  private emit(entry: Entry, event: JobEventInit): void {
    const e = create(JobEventSchema, { jobId: entry.job.id, sequence: entry.events.length + 1, time: timestampNow(), event });
    entry.events.push(e);
    entry.job.lastSequence = e.sequence;
    this.write(entry, () => (entry.unsaved ? this.saveWhole(entry) : this.records.appendEvent(e)));
    for (const wake of entry.wake) wake();
  }

  private save(entry: Entry): void {
    this.write(entry, () => (entry.unsaved ? this.saveWhole(entry) : this.records.save(entry.job, entry.link, entry.firstRun)));
  }

  private saveWhole(entry: Entry): void {
    this.records.save(entry.job, entry.link, entry.firstRun);
    this.records.rewriteEvents(entry.job.id, entry.events);
  }

  /**
   * A write of a job's files. One that fails (a full disk) does not stop the job or the
   * process: the job goes on in memory, the failure is logged once, and the next write that
   * succeeds replaces the record and the events file whole.
   */
  private write(entry: Entry, fn: () => void): void {
    try {
      fn();
      if (entry.unsaved) this.logger.info({ job: entry.job.id }, "job record written again");
      entry.unsaved = false;
    } catch (err) {
      if (!entry.unsaved) this.logger.error({ job: entry.job.id, dir: this.options.dir, code: (err as NodeJS.ErrnoException).code, err: (err as Error).message }, "could not write the job's record; it is kept in memory and written again with its next change");
      entry.unsaved = true;
    }
  }
}

function endSpan(span: Span, error?: ConnectError): void {
  if (error) markRunFailed(span, error);
  span.end();
}

/** Create's answer when the jobs folder cannot take the new job's record: a full disk is RESOURCE_EXHAUSTED. */
function recordWriteFailed(err: unknown): ConnectError {
  const code = (err as NodeJS.ErrnoException).code ?? "error";
  return rpcError(code === "ENOSPC" ? Code.ResourceExhausted : Code.Internal, "JOB_RECORD_WRITE_FAILED", `could not write the job's record in the jobs folder (${code}); no job was created`, { code });
}
