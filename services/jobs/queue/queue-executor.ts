/**
 * The api side of the distributed executor: Create enqueues on BullMQ and records the job in
 * Redis; Get, List, Watch and Cancel read and change the shared records, so any api replica
 * answers for any job. Training happens in worker processes (queue-worker.ts).
 */
import { clone } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { context, isSpanContextValid, SpanKind, SpanStatusCode, trace, type Counter, type Meter, type Tracer } from "@opentelemetry/api";
import { Queue } from "bullmq";
import { JobSchema, JobState, type Job, type JobEvent, type JobKind } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError, shuttingDown, toStatus } from "../../platform/errors.ts";
import { DEFAULT_PAGE_SIZE, keyToken } from "../../platform/validate.ts";
import { keyOfToken } from "../job-pages.ts";
import { silentLogger, type Logger } from "../../platform/log.ts";
import { SCOPE } from "../../platform/telemetry.ts";
import { jobQuotaExceeded } from "../../common/quotas.ts";
import { cancelledError, FINAL, JOB_METRICS, visibleTo, type JobExecutor, type JobSpec } from "../executor.ts";
import { clusterReady, connectQueue, QUEUE_NAME, queueKeys, redisOptions, type QueueKeys, type QueueRedis, type QueueTarget } from "./connection.ts";
import { observeQueue } from "./metrics.ts";
import { OutageLog } from "./outage-log.ts";
import { DEFAULT_MAX_WATCHES } from "./watch-limit.ts";
import { EventStreams } from "./event-streams.ts";
import { RedisJobs } from "./redis-jobs.ts";
import { injectTrace, type TraceCarrier } from "./trace-carrier.ts";
import { jobNotFound, KIND_NAME, newJob, sameRequest } from "../new-job.ts";

/** What a queued BullMQ job carries: the record's id and the enqueue span's W3C context. */
export interface QueuedJobData {
  id: string;
  trace: TraceCarrier;
}

export interface QueueExecutorOptions extends QueueTarget {
  /** Key prefix (tests isolate themselves with their own). */
  prefix?: string;
  tracer?: Tracer;
  meter?: Meter;
  logger?: Logger;
  /** Longest wait for BullMQ to take a new job (it waits for a connection without limit). */
  enqueueTimeoutMs?: number;
  /** How often watchAvailability asks Redis (default 2 s; each ask waits at most half of it). */
  availabilityProbeMs?: number;
  /** Watch streams served at once (DEFAULT_MAX_WATCHES); they share one Redis connection. */
  maxWatches?: number;
}

export class QueueExecutor implements JobExecutor {
  readonly keys: QueueKeys;
  private readonly target: QueueTarget;
  private readonly redis: QueueRedis;
  private readonly jobs: RedisJobs;
  private readonly streams: EventStreams;
  private readonly queue: Queue;
  private readonly tracer: Tracer;
  private readonly logger: Logger;
  private readonly finished?: Counter;
  private readonly watchers = new Set<AbortController>();
  private stopping = false;
  private readonly enqueueTimeoutMs: number;
  private readonly probeMs: number;
  private readonly maxWatches: number;

  constructor(options: QueueExecutorOptions) {
    this.target = { url: options.url, cluster: options.cluster };
    this.keys = queueKeys(options.prefix, options.cluster);
    this.logger = options.logger ?? silentLogger;
    this.tracer = options.tracer ?? trace.getTracer(SCOPE);
    this.enqueueTimeoutMs = options.enqueueTimeoutMs ?? 5000;
    this.probeMs = options.availabilityProbeMs ?? 2000;
    this.maxWatches = options.maxWatches ?? DEFAULT_MAX_WATCHES;
    const outage = new OutageLog(this.logger);
    // A request fails after a few reconnection attempts instead of hanging while Redis is down.
    this.redis = connectQueue(this.target, 3, outage.connectionError, outage.ready);
    this.jobs = new RedisJobs(this.redis, this.keys);
    this.streams = new EventStreams(this.target, this.jobs, this.redis);
    this.queue = new Queue(QUEUE_NAME, { connection: this.redis, prefix: this.keys.prefix });
    this.queue.on("error", outage.bullmqError("job queue error"));
    if (options.meter) {
      this.finished = options.meter.createCounter(JOB_METRICS.finished, { description: "Jobs that reached a final state" });
      observeQueue(options.meter, this.queue);
    }
  }

  async create(kind: JobKind, spec: JobSpec, tenant = "", maxActive = 0, requestId = ""): Promise<Job> {
    const job = newJob(kind, spec, tenant, requestId);
    // A retried Create: the job it made, not another (nor a quota refusal for it).
    const prior = requestId ? await this.guard(() => this.jobs.read(job.id)) : undefined;
    if (prior) return sameRequest(prior.job, spec);
    if (this.stopping) throw shuttingDown();
    // Refused before anything is queued; the record's script checks again, atomically. Not
    // with a request_id: a concurrent Create of it may record the job between the read above
    // and this count, which would count it against its own retry; the script checks it first.
    const active = maxActive > 0 && !requestId ? await this.guard(() => this.jobs.active(tenant)) : 0;
    if (maxActive > 0 && active >= maxActive) throw jobQuotaExceeded(tenant, maxActive, active);
    const caller = trace.getSpan(context.active())?.spanContext();
    const attributes = { "vaccine.job.id": job.id, "vaccine.job.kind": KIND_NAME[kind], "messaging.system": "bullmq", "messaging.destination.name": QUEUE_NAME };
    return this.tracer.startActiveSpan(`enqueue ${KIND_NAME[kind]}`, { kind: SpanKind.PRODUCER, attributes }, async (span) => {
      try {
        // The worker's job span continues this trace, so the job's trace is the RPC's.
        if (isSpanContextValid(span.spanContext())) job.traceId = span.spanContext().traceId;
        const data: QueuedJobData = { id: job.id, trace: injectTrace() };
        // Queued before it is recorded: a worker that finds no record yet waits for it,
        // and a job whose api died in between (never answered) is dropped, not stranded.
        const enqueue = () => within(this.queue.add(KIND_NAME[kind], data, { jobId: job.id, removeOnComplete: true, removeOnFail: 1000 }), this.enqueueTimeoutMs);
        await this.guard(enqueue);
        const link = caller && isSpanContextValid(caller) ? { traceId: caller.traceId, spanId: caller.spanId } : undefined;
        const created = await this.guard(() => this.jobs.create(job, link, { case: "stateChange", value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED } }, maxActive));
        if (typeof created === "object") {
          // A Create of the same request_id recorded the job meanwhile: that is this one's answer.
          const recorded = requestId ? await this.guard(() => this.jobs.read(job.id)) : undefined;
          if (recorded) return sameRequest(recorded.job, spec);
          // Another create of the tenant's took the last slot since the check above. A worker
          // that took the queued job already finds no record and drops it.
          await this.queue.remove(job.id).catch(() => {});
          throw jobQuotaExceeded(tenant, maxActive, created.active);
        }
        // A refused Create of the same request_id may have removed the queued job it shares
        // with this one: queued again (BullMQ adds nothing while it is there).
        if (requestId) await this.guard(enqueue);
        // The same request_id's Create on another replica recorded it first: BullMQ kept one
        // queued job for the id, and this call answers with that job.
        if (created === "exists") return sameRequest((await this.record(kind, job.id, tenant)).job, spec);
        job.lastSequence = 1; // the record's first event, written with it
        return clone(JobSchema, job);
      } catch (err) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    });
  }

  async get(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    return (await this.record(kind, id, tenant)).job;
  }

  async list(kind: JobKind, pageSize: number, pageToken: string, tenant?: string): Promise<{ jobs: Job[]; nextPageToken: string }> {
    const after = pageToken ? keyOfToken(kind, pageToken) : "";
    const page = await this.guard(() => this.jobs.page(kind, pageSize || DEFAULT_PAGE_SIZE, after, tenant));
    return { jobs: page.jobs, nextPageToken: page.more && page.last ? keyToken(page.last) : "" };
  }

  async unfinished(tenant?: string): Promise<Job[]> {
    return this.guard(() => this.jobs.unfinished(tenant));
  }

  /** A queued job is cancelled here; a running one is marked CANCELLING and its worker told. */
  async cancel(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    for (;;) {
      const { job } = await this.record(kind, id, tenant);
      if (FINAL.has(job.state) || job.state === JobState.CANCELLING) return job;
      if (job.state === JobState.QUEUED) {
        const error = cancelledError();
        job.endTime = timestampNow();
        job.error = toStatus(error);
        const to = JobState.CANCELLED;
        const r = await this.guard(() =>
          this.jobs.write(id, { job, from: JobState.QUEUED, to, event: { case: "stateChange", value: { from: JobState.QUEUED, to, error: job.error } } }),
        );
        if (r.ok) {
          job.state = to;
          job.lastSequence = r.sequence;
          this.finished?.add(1, { "vaccine.job.kind": KIND_NAME[kind], "vaccine.job.state": "cancelled" });
          // A worker that takes it anyway finds the record final and drops it.
          await this.queue.remove(id).catch(() => 0);
          return job;
        }
      } else {
        const to = JobState.CANCELLING;
        const r = await this.guard(() => this.jobs.write(id, { from: job.state, to, event: { case: "stateChange", value: { from: job.state, to } }, cancel: true }));
        if (r.ok) {
          job.state = to;
          job.lastSequence = r.sequence;
          return job;
        }
      }
      // The state changed in between (a worker took or finished the job): decide again.
    }
  }

  /**
   * History then live events, from the job's stream. `afterSequence` resumes a watch: only
   * later events are sent. Live events of every Watch come from one blocking connection
   * (event-streams.ts).
   */
  async *watch(kind: JobKind, id: string, signal: AbortSignal, afterSequence = 0, tenant?: string): AsyncGenerator<JobEvent> {
    const first = await this.record(kind, id, tenant);
    if (FINAL.has(first.job.state) && first.seq <= afterSequence) return;
    if (this.stopping) throw shuttingDown();
    // Each Watch holds its events in memory until its client reads them: bounded per process.
    if (this.watchers.size >= this.maxWatches) {
      throw rpcError(Code.ResourceExhausted, "WATCH_LIMIT", `this server serves ${this.maxWatches} Watch streams already (VACCINE_MAX_WATCHES); retry later, or Get the job`, {
        limit: String(this.maxWatches),
      });
    }
    const stop = new AbortController();
    this.watchers.add(stop);
    try {
      // Read from no later than the record's last event, so that the job's final event stays
      // in reach whatever a caller asks (the handler refuses an after_sequence past it): the
      // watch ends with the job, as the embedded executor's does. Only later events are sent.
      for await (const events of this.streams.events(id, Math.min(afterSequence, first.seq), AbortSignal.any([signal, stop.signal]))) {
        for (const e of events) {
          if (e.sequence > afterSequence) yield e;
          if (e.event.case === "stateChange" && FINAL.has(e.event.value.to)) return;
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (stop.signal.aborted) throw shuttingDown();
      throw unavailable(err);
    } finally {
      this.watchers.delete(stop);
    }
    if (stop.signal.aborted && !signal.aborted) throw shuttingDown();
  }

  /** Refuses new jobs, ends open Watch streams with UNAVAILABLE (clients resume elsewhere), closes Redis. */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const w of this.watchers) w.abort();
    this.streams.close();
    await this.queue.close().catch(() => {});
    await this.redis.quit().catch(() => {});
  }

  /**
   * Asks the node that holds the queue's keys (in a cluster, the slot's: the client's own
   * status stays ready while one node is down) every probeMs, and tells changes.
   */
  watchAvailability(listener: (available: boolean, why?: string) => void): () => void {
    let last: boolean | undefined;
    let stopped = false;
    let asking = false;
    const probe = async () => {
      if (asking) return;
      asking = true;
      // A cluster's client refuses commands until it has found its nodes, as in guard().
      const up = await clusterReady(this.redis)
        .then(() => within(this.redis.exists(this.keys.wait), this.probeMs / 2))
        .then(
          () => true,
          () => false,
        );
      asking = false;
      // A probe that was under way when the watch stopped (shutdown) tells nothing.
      if (stopped || up === last) return;
      last = up;
      const { host, port } = redisOptions(this.target.url);
      listener(up, up ? undefined : `the queue's Redis at ${host}:${port} does not answer`);
    };
    void probe();
    const timer = setInterval(() => void probe(), this.probeMs);
    timer.unref();
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }

  /** Another tenant's job is missing to the caller, exactly as an unknown id. */
  private async record(kind: JobKind, id: string, tenant?: string) {
    const r = await this.guard(() => this.jobs.read(id));
    if (!r || r.job.kind !== kind || !visibleTo(r.job, tenant)) throw jobNotFound(id);
    return r;
  }

  /** Redis failures are UNAVAILABLE to the caller: retryable, on this or another replica. */
  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      await clusterReady(this.redis);
      return await fn();
    } catch (err) {
      throw err instanceof ConnectError ? err : unavailable(err);
    }
  }
}

async function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A Redis failure as the caller sees it: retryable, on this or another replica. */
export function unavailable(err: unknown): ConnectError {
  // ioredis's own words name its option ("maxRetriesPerRequest"), which is no advice for a client.
  const why = /max retries per request/i.test((err as Error).message) ? "Redis did not answer" : (err as Error).message;
  return rpcError(Code.Unavailable, "QUEUE_UNAVAILABLE", `the job queue cannot be reached (${why}); retry later`);
}
