/**
 * The worker side of the distributed executor: a BullMQ Worker that takes queued jobs and
 * runs the injected JobWork, writing state, events, training states and the result into the
 * shared records (redis-jobs.ts), every write fenced on the job's BullMQ lock token.
 *
 * Failure semantics:
 * - killed (SIGKILL, OOM) or stalled: the lock expires, another worker's stalled check puts
 *   the job back, that worker finds the record still RUNNING, counts a failure and resumes
 *   from the last training state; the lost worker, if still alive, can no longer write.
 * - SIGTERM (shutdown): running jobs stop after their step, write a training state, go back
 *   to QUEUED and to the front of BullMQ's wait list; the worker then exits.
 * - a failing work function: retryable codes (UNAVAILABLE, INTERNAL, ...) are retried after a
 *   growing delay; after maxAttempts failures of any kind (errors or lost workers), or at once
 *   for a non-retryable code, the job is FAILED with the last reason.
 * - cancel: the api marks the record CANCELLING and publishes the id; the worker (or its
 *   poll of the flag, should the message be missed) aborts the work with "cancel".
 */
import { hostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectError } from "@connectrpc/connect";
import { context, isSpanContextValid, SpanKind, SpanStatusCode, trace, type Counter, type Histogram, type Meter, type Span, type Tracer } from "@opentelemetry/api";
import { DelayedError, UnrecoverableError, WaitingError, Worker, type Job as QueuedJob } from "bullmq";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.ts";
import { CheckpointRefSchema } from "../../../gen/vaccine/v1/common_pb.ts";
import { JobState, LogSeverity, type Job, type JobKind } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError, toStatus } from "../../platform/errors.ts";
import { silentLogger, type Logger } from "../../platform/log.ts";
import { SCOPE } from "../../platform/telemetry.ts";
import { markRunFailed } from "../telemetry.ts";
import { cancelledError, FINAL, JOB_METRICS, type ErrorMapper, type JobContext, type JobEventInit, type JobWork, type StopReason } from "../executor.ts";
import { connectQueue, QUEUE_NAME, queueKeys, type QueueKeys, type QueueRedis, type QueueTarget } from "./connection.ts";
import { QUEUE_METRICS, StepRate } from "./metrics.ts";
import { OutageLog } from "./outage-log.ts";
import type { QueuedJobData } from "./queue-executor.ts";
import { RedisJobs, type Change } from "./redis-jobs.ts";
import { extractTrace } from "./trace-carrier.ts";
import { KIND_NAME } from "../new-job.ts";

export interface QueueWorkerOptions extends QueueTarget {
  prefix?: string;
  work: Partial<Record<JobKind, JobWork>>;
  mapError: ErrorMapper;
  /** Jobs trained at once by this process (VACCINE_WORKER_CONCURRENCY). */
  concurrency?: number;
  /** BullMQ lock duration: a lost worker's job is taken over about this long after it stopped renewing. */
  lockMs?: number;
  /** Runs of a job that may fail (errors or lost workers) before it is FAILED for good. */
  maxAttempts?: number;
  /** Delay before the first retry of a failed run; doubles each time. */
  retryDelayMs?: number;
  /** How often running jobs' cancel flags are read (pub/sub is the fast path; this catches missed messages). */
  pollMs?: number;
  tracer?: Tracer;
  meter?: Meter;
  logger?: Logger;
  /** This worker's name in metrics and logs (default host:pid). */
  id?: string;
}

/** Codes worth another run: the next one may land on a healthier worker or a reachable store. */
const RETRYABLE = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Aborted, Code.DeadlineExceeded, Code.ResourceExhausted]);

/** A job queued before its record was written (the api enqueues first) waits this long for it. */
const MISSING_RECORD_GRACE_MS = 30_000;
/**
 * How long a worker that took such a job waits for its record in place, keeping its turn, before
 * it puts the job back (delayed) and takes the next: an api records a job just after queueing it.
 */
const RECORD_WAIT_MS = 250;
const RECORD_POLL_MS = 10;

interface Run {
  job: Job;
  token: string;
  abort: AbortController;
  /** Set when a write was refused by the fence: another worker owns the job now. */
  lost: boolean;
  /** The serial chain of this run's writes, so events keep their order. */
  writes: Promise<void>;
  /** Progress changed since the record was last written. */
  dirty: boolean;
  failures: number;
  /** How many times a worker claimed the job, this run included. */
  attempt: number;
}

type Outcome = "succeeded" | "failed" | "cancelled" | "requeued" | "retried" | "lost";

/** How long an idle worker's shutdown waits for BullMQ to close before it cuts its connections. */
const IDLE_CLOSE_MS = 1000;

export class QueueWorker {
  readonly keys: QueueKeys;
  readonly id: string;
  private readonly redis: QueueRedis;
  private readonly subscriber: QueueRedis;
  /** BullMQ's, beside ours: its lock renewals do not wait behind our writes. */
  private readonly workerRedis: QueueRedis;
  private readonly jobs: RedisJobs;
  private readonly worker: Worker<QueuedJobData>;
  private readonly running = new Map<string, Run>();
  private readonly tracer: Tracer;
  private readonly logger: Logger;
  private readonly maxAttempts: number;
  private readonly retryDelayMs: number;
  private readonly poller: NodeJS.Timeout;
  private readonly rate = new StepRate();
  private readonly metrics?: { finished: Counter; duration: Histogram; takeovers: Counter; steps: Counter };
  private stopping?: Promise<void>;
  private polling = false;

  constructor(private readonly options: QueueWorkerOptions) {
    const lockMs = options.lockMs ?? 30_000;
    this.keys = queueKeys(options.prefix, options.cluster);
    this.id = options.id ?? `${hostname()}:${process.pid}`;
    this.tracer = options.tracer ?? trace.getTracer(SCOPE);
    this.logger = (options.logger ?? silentLogger).child({ worker: this.id });
    this.maxAttempts = options.maxAttempts ?? 3;
    this.retryDelayMs = options.retryDelayMs ?? 5000;
    // Writes wait out a Redis outage (null: no retry limit); the fence decides whether they still count.
    const outage = new OutageLog(this.logger);
    this.redis = connectQueue(options, null, outage.connectionError, outage.ready);
    this.jobs = new RedisJobs(this.redis, this.keys);
    this.subscriber = connectQueue(options, null);
    this.subscriber.on("message", (_channel: string, id: string) => this.cancelRequested(id));
    void this.subscriber.subscribe(this.keys.cancel).catch((err: Error) => this.logger.warn({ error: err.message }, "cancel channel unavailable; polling only"));
    this.poller = setInterval(() => void this.pollCancels(), options.pollMs ?? 1000);
    this.poller.unref();

    const meter = options.meter;
    if (meter) {
      const attrs = { "vaccine.worker.id": this.id };
      meter.createCounter(QUEUE_METRICS.workerStarts, { description: "Worker processes started" }).add(1, attrs);
      meter.createObservableGauge(QUEUE_METRICS.stepRate, { unit: "{step}/s", description: "Training steps per second of this worker over the last minute" }).addCallback((r) => r.observe(this.rate.perSecond(), attrs));
      this.metrics = {
        finished: meter.createCounter(JOB_METRICS.finished, { description: "Jobs that reached a final state" }),
        duration: meter.createHistogram(QUEUE_METRICS.runDuration, { unit: "s", description: "One run of a job on a worker" }),
        takeovers: meter.createCounter(QUEUE_METRICS.takeovers, { description: "Jobs resumed after their worker was lost" }),
        steps: meter.createCounter(QUEUE_METRICS.steps, { unit: "{step}", description: "Training steps run by this worker" }),
      };
    }

    this.workerRedis = connectQueue(options, null);
    this.worker = new Worker<QueuedJobData>(QUEUE_NAME, (job, token) => this.process(job, token!), {
      connection: this.workerRedis,
      prefix: this.keys.prefix,
      concurrency: options.concurrency ?? 1,
      lockDuration: lockMs,
      // BullMQ renews a lock every lockRenewTime, and a Redis outage stops renewals: the lock
      // then lasts what was left of it, so renewing every tenth keeps at least 90% of it for an
      // outage (every third lost a run to a 27 s outage under a 30 s lock). A lost worker's job
      // is back in the queue within about twice the lock.
      lockRenewTime: lockMs / 10,
      stalledInterval: lockMs / 2,
      // Our own count of lost runs (at claim) fails the job with a reason first; this is a backstop.
      maxStalledCount: this.maxAttempts,
      // Jobs are taken once the process is ready (start()), not while it is still starting.
      autorun: false,
    });
    this.worker.on("error", outage.bullmqError("job worker error"));
    // Renewal refused: the lock is gone (another worker may own the job): stop writing and stop training.
    this.worker.on("lockRenewalFailed", (ids: string[]) => ids.forEach((id) => this.running.get(id) && this.lose(this.running.get(id)!)));
  }

  /** Starts taking jobs. */
  start(): void {
    this.worker.run().catch((err: Error) => this.logger.error({ error: err.message }, "job worker stopped"));
  }

  /** Stops taking jobs, asks running ones to stop after their step and hand back, waits, closes. */
  shutdown(): Promise<void> {
    this.stopping ??= (async () => {
      const idle = this.running.size === 0;
      const closed = this.worker.close();
      for (const run of this.running.values()) run.abort.abort("shutdown" satisfies StopReason);
      // With no job to hand back there is nothing to wait for: while Redis is away BullMQ's
      // close would wait for it, and hold a pod's stop to its whole shutdown timeout.
      await (idle ? Promise.race([closed.catch(() => {}), new Promise((r) => setTimeout(r, IDLE_CLOSE_MS))]) : closed);
      clearInterval(this.poller);
      for (const conn of [this.subscriber, this.workerRedis, this.redis]) {
        if (conn.status === "ready") await conn.quit().catch(() => {});
        else conn.disconnect();
      }
    })();
    return this.stopping;
  }

  private async process(queued: QueuedJob<QueuedJobData>, token: string): Promise<void> {
    const id = queued.data.id;
    if (this.stopping) {
      await queued.moveToWait(token);
      throw new WaitingError();
    }
    let claim = await this.jobs.claim(id, token);
    for (const start = Date.now(); claim === "missing" && Date.now() - start < RECORD_WAIT_MS; ) {
      await new Promise((resolve) => setTimeout(resolve, RECORD_POLL_MS));
      claim = await this.jobs.claim(id, token);
    }
    if (claim === "missing") {
      if (Date.now() - queued.timestamp < MISSING_RECORD_GRACE_MS) {
        await queued.moveToDelayed(Date.now() + 500, token);
        throw new DelayedError();
      }
      this.logger.warn({ job: id }, "dropped a queued job that has no record (its api stopped before recording it)");
      return;
    }
    // Not ours after all (the lock changed hands already): leave it to the holder.
    if (claim === "fenced") throw new WaitingError();
    const stored = (await this.jobs.read(id))!;
    if (FINAL.has(stored.job.state)) return;
    const run: Run = { job: stored.job, token, abort: new AbortController(), lost: false, writes: Promise.resolve(), dirty: false, failures: stored.failures, attempt: stored.attempt };
    this.running.set(id, run);
    // Taken while shutdown began: it stops at once, handing the job back.
    if (this.stopping) run.abort.abort("shutdown" satisfies StopReason);
    try {
      const { job } = run;
      if (job.state === JobState.CANCELLING || (stored.cancel && job.state === JobState.RUNNING)) {
        await this.finish(run, JobState.CANCELLED, cancelledError());
        return;
      }
      if (job.state === JobState.RUNNING) {
        // The record says RUNNING but BullMQ handed the job to us: its last worker was lost.
        this.metrics?.takeovers.add(1, { "vaccine.job.kind": KIND_NAME[job.kind] });
        run.failures++;
        this.logger.warn(
          { job: job.id, failedRuns: run.failures, allowed: this.maxAttempts },
          "took over a job whose worker was lost (killed, out of memory, or its lock expired, as in a Redis outage longer than the lock)",
        );
        if (run.failures >= this.maxAttempts) {
          const error = rpcError(
            Code.Aborted,
            "WORKER_LOST",
            `the job's worker was lost ${run.failures} times (killed, out of memory, or its lock expired); it is not retried again`,
            { attempts: String(run.failures) },
          );
          if (!(await this.finish(run, JobState.FAILED, error))) return this.afterLost(run);
          // In the job's trace and the log as any failed run is: a job span with the reason.
          const span = this.jobSpan(queued, job);
          markRunFailed(span, error);
          context.with(trace.setSpan(context.active(), span), () => this.logger.warn({ job: job.id, code: Code[error.code], error: error.rawMessage }, "job failed"));
          span.end();
          throw new UnrecoverableError(error.rawMessage);
        }
        const from = job.trainingState ? `resumes from ${job.trainingState.uri}` : "starts again";
        if ((await this.requeue(run, `its worker was lost mid-job (${run.failures} of ${this.maxAttempts} failed runs allowed); it ${from}`)) !== "queued") {
          return this.afterLost(run);
        }
      }
      return await this.train(queued, run);
    } finally {
      this.running.delete(id);
    }
  }

  /** A run's span: a CONSUMER child of the enqueue span, in the trace of the RPC that created the job. */
  private jobSpan(queued: QueuedJob<QueuedJobData>, job: Job): Span {
    const kind = KIND_NAME[job.kind];
    const parent = extractTrace(queued.data.trace);
    const enqueued = trace.getSpanContext(parent);
    return this.tracer.startSpan(
      `job ${kind}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: { "vaccine.job.id": job.id, "vaccine.job.kind": kind, "vaccine.worker.id": this.id, "messaging.system": "bullmq" },
        links: enqueued && isSpanContextValid(enqueued) ? [{ context: enqueued }] : [],
      },
      parent,
    );
  }

  private async train(queued: QueuedJob<QueuedJobData>, run: Run): Promise<void> {
    const { job } = run;
    const kind = KIND_NAME[job.kind];
    const span = this.jobSpan(queued, job);
    if (isSpanContextValid(span.spanContext())) job.traceId = span.spanContext().traceId;
    job.startTime ??= timestampNow();
    if (!(await this.transition(run, JobState.QUEUED, JobState.RUNNING))) {
      span.end();
      // Cancelled between the claim and now: the api already recorded it (or the lock was lost).
      return this.afterLost(run);
    }
    // Which worker runs which job, in the job's trace: what an operator greps for after a kill.
    context.with(trace.setSpan(context.active(), span), () =>
      this.logger.info({ job: job.id, attempt: run.attempt, ...(job.trainingState && { resumes_from: job.trainingState.uri }) }, "job started"),
    );
    const t0 = performance.now();
    const outcome = await this.runWork(queued, run, span).catch((err: unknown) => {
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    });
    span.end();
    const seconds = (performance.now() - t0) / 1000;
    this.metrics?.duration.record(seconds, { "vaccine.job.kind": kind, "vaccine.job.outcome": outcome.outcome });
    // How each run ended, beside "job started": requeued is a shutdown's hand-back, lost a lost lock.
    context.with(trace.setSpan(context.active(), span), () =>
      this.logger.info({ job: job.id, attempt: run.attempt, outcome: outcome.outcome, step: job.progress?.step ?? 0, seconds: Math.round(seconds * 10) / 10 }, "job run ended"),
    );
    if (outcome.after) await outcome.after();
  }

  /** Runs the work and records how it ended; `after` tells BullMQ how it ended. */
  private async runWork(queued: QueuedJob<QueuedJobData>, run: Run, span: Span): Promise<{ outcome: Outcome; after?: () => Promise<void> }> {
    const { job, token } = run;
    const ctx: JobContext = {
      job,
      signal: run.abort.signal,
      tracer: this.tracer,
      emit: (event) => {
        if (event?.case === "step") {
          this.rate.add();
          this.metrics?.steps.add(1, { "vaccine.worker.id": this.id });
        }
        this.enqueue(run, { event });
      },
      progress: (p) => {
        Object.assign(job.progress!, p);
        run.dirty = true;
      },
      setTrainingState: (ref) => {
        job.trainingState = create(CheckpointRefSchema, ref);
        run.dirty = true;
        this.enqueue(run, {});
      },
    };
    let done: Awaited<ReturnType<JobWork>>;
    let failure: unknown;
    try {
      const work = this.options.work[job.kind];
      if (!work) throw rpcError(Code.Unimplemented, "NOT_IMPLEMENTED", `no work function for ${KIND_NAME[job.kind]} jobs`);
      done = await context.with(trace.setSpan(context.active(), span), () => work(ctx));
    } catch (err) {
      failure = err;
    }
    await run.writes;
    const reason = run.abort.signal.reason as StopReason | undefined;
    const lost = { outcome: "lost" as const, after: async () => this.afterLost(run) };
    if (run.lost) return lost;
    if (failure === undefined && done) {
      job.result = create(CheckpointRefSchema, done.result);
      job.lineage = done.lineage.map((r) => create(CheckpointRefSchema, r));
      return (await this.finish(run, JobState.SUCCEEDED)) ? { outcome: "succeeded" } : lost;
    }
    if (failure === undefined && reason === "cancel") {
      return (await this.finish(run, JobState.CANCELLED, cancelledError())) ? { outcome: "cancelled" } : lost;
    }
    if (failure === undefined && reason === "shutdown") {
      const r = await this.requeue(run, "stopped at worker shutdown; a worker resumes it from its training state");
      if (r === "cancelling") return (await this.finish(run, JobState.CANCELLED, cancelledError())) ? { outcome: "cancelled" } : lost;
      if (r === "lost") return lost;
      // To the front of the wait list, not counted as an attempt.
      return { outcome: "requeued", after: () => queued.moveToWait(token).then(() => Promise.reject(new WaitingError())) };
    }
    const error = this.options.mapError(failure ?? new Error("the job's work stopped without a result and without being asked to"));
    markRunFailed(span, error);
    context.with(trace.setSpan(context.active(), span), () => this.logger.warn({ job: job.id, code: Code[error.code], error: error.rawMessage }, "job run failed"));
    run.failures++;
    if (RETRYABLE.has(error.code) && run.failures < this.maxAttempts) {
      const delay = this.retryDelayMs * 2 ** (run.failures - 1);
      const r = await this.requeue(run, `run ${run.failures} of ${this.maxAttempts} failed (${Code[error.code]}: ${error.rawMessage}); retrying in ${delay / 1000} s`);
      if (r === "cancelling") return (await this.finish(run, JobState.CANCELLED, cancelledError())) ? { outcome: "cancelled" } : lost;
      if (r === "lost") return lost;
      return { outcome: "retried", after: () => queued.moveToDelayed(Date.now() + delay, token).then(() => Promise.reject(new DelayedError())) };
    }
    const final = run.failures > 1 ? withAttempts(error, run.failures, this.maxAttempts) : error;
    if (!(await this.finish(run, JobState.FAILED, final))) return lost;
    return { outcome: "failed", after: () => Promise.reject(new UnrecoverableError(final.rawMessage)) };
  }

  /** Another worker owns the job now (or it was finalized elsewhere): tell BullMQ nothing. */
  private async afterLost(run: Run): Promise<void> {
    if (run.lost) throw new WaitingError();
  }

  private lose(run: Run): void {
    if (run.lost) return;
    run.lost = true;
    this.logger.warn({ job: run.job.id }, "lost the job's lock; stopping it without writing (another worker resumes it)");
    run.abort.abort("shutdown" satisfies StopReason);
  }

  private cancelRequested(id: string): void {
    const run = this.running.get(id);
    if (!run || run.abort.signal.aborted) return;
    // The api recorded CANCELLING; the work stops after its step.
    run.job.state = JobState.CANCELLING;
    run.abort.abort("cancel" satisfies StopReason);
  }

  private async pollCancels(): Promise<void> {
    const ids = [...this.running.keys()];
    // One poll at a time: while Redis is away, reads wait instead of piling up.
    if (ids.length === 0 || this.polling) return;
    this.polling = true;
    try {
      const flags = await Promise.all(ids.map((id) => this.redis.hget(this.keys.job(id), "cancel")));
      ids.forEach((id, i) => flags[i] === "1" && this.cancelRequested(id));
    } catch {
      // Redis unreachable: the next poll tries again.
    } finally {
      this.polling = false;
    }
  }

  /** Queues a fenced write behind the run's earlier ones; the record's JSON goes along when it changed. */
  private enqueue(run: Run, change: Change): void {
    run.writes = run.writes.then(async () => {
      if (run.lost) return;
      if (run.dirty) {
        change.job = run.job;
        run.dirty = false;
      }
      if (!change.job && !change.event) return;
      await this.write(run, change);
    });
  }

  /** One fenced write; a refusal by the fence (or a failed write) loses the job. */
  private async write(run: Run, change: Change): Promise<Awaited<ReturnType<RedisJobs["write"]>> | undefined> {
    try {
      const r = await this.jobs.write(run.job.id, change, run.token);
      if (!r.ok && r.why !== "state") this.lose(run);
      return r;
    } catch (err) {
      this.logger.warn({ job: run.job.id, error: (err as Error).message }, "job record write failed");
      this.lose(run);
      return undefined;
    }
  }

  /** A compare-and-set state change with its event; false when the state was not `from` or the job was lost. */
  private async transition(run: Run, from: JobState, to: JobState, extra: Omit<Change, "from" | "to" | "event"> = {}): Promise<boolean> {
    await run.writes;
    if (run.lost) return false;
    const error = run.job.error;
    const r = await this.write(run, {
      ...extra,
      job: run.job,
      from,
      to,
      event: { case: "stateChange", value: { from, to, error: FINAL.has(to) ? error : undefined } },
      fields: { failures: run.failures },
    });
    if (!r?.ok) {
      if (r?.why === "state") run.job.state = r.state;
      return false;
    }
    run.dirty = false;
    run.job.state = to;
    return true;
  }

  /** Back to QUEUED with a log line; "cancelling" when a cancel came first (the caller cancels instead). */
  private async requeue(run: Run, message: string): Promise<"queued" | "cancelling" | "lost"> {
    if (await this.transition(run, JobState.RUNNING, JobState.QUEUED)) {
      this.log(run, message);
      await run.writes;
      return run.lost ? "lost" : "queued";
    }
    return run.job.state === JobState.CANCELLING ? "cancelling" : "lost";
  }

  /** The final state, from whatever state the record is in now (RUNNING, or CANCELLING after a cancel). */
  private async finish(run: Run, state: JobState, error?: ConnectError): Promise<boolean> {
    run.job.endTime = timestampNow();
    if (error) run.job.error = toStatus(error);
    for (let i = 0; i < 5; i++) {
      if (await this.transition(run, run.job.state, state)) {
        this.metrics?.finished.add(1, { "vaccine.job.kind": KIND_NAME[run.job.kind], "vaccine.job.state": JobState[state].toLowerCase() });
        return true;
      }
      if (run.lost || FINAL.has(run.job.state)) return false;
    }
    return false;
  }

  private log(run: Run, message: string): void {
    this.enqueue(run, { event: { case: "log", value: { severity: LogSeverity.INFO, message } } satisfies JobEventInit });
  }
}


/** The last run's error, saying how many runs failed. */
function withAttempts(error: ConnectError, failures: number, max: number): ConnectError {
  const info = error.findDetails(ErrorInfoSchema)[0];
  return rpcError(error.code, info?.reason ?? "INTERNAL", `${error.rawMessage} (failed ${failures} of ${max} runs)`, { ...(info?.metadata ?? {}), attempts: String(failures) });
}
