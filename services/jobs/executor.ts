/**
 * The job executor's contract: what the Align and FineTune handlers call, whatever runs the
 * jobs. The embedded executor (local-executor.ts) queues them in this process with durable
 * records on disk; a distributed one (a queue with separate workers) implements the same
 * interface, so handlers and work functions do not change.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Tracer } from "@opentelemetry/api";
import { JobState, type JobEventSchema, type JobKind, type Job, type JobEvent, type JobProgress } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { rpcError } from "../platform/errors.ts";
import type { CheckpointRef } from "../runtime/store/store.ts";

/** The states a job never leaves. */
export const FINAL: ReadonlySet<JobState> = new Set([JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED]);

/** The error a job cancelled by CancelJob carries. */
export function cancelledError(): ConnectError {
  return rpcError(Code.Canceled, "JOB_CANCELLED", "the job was cancelled by a CancelAlignJob or CancelFineTuneJob call");
}

export type JobSpec = { case: "align"; value: AlignSpec } | { case: "fineTune"; value: FineTuneSpec };

/** Why a running job is asked to stop after its step. */
export type StopReason = "cancel" | "shutdown";

/** One event's payload: a state change, step metrics, a checkpoint written or a log line. */
export type JobEventInit = MessageInitShape<typeof JobEventSchema>["event"];

/** What a job's work function sees. */
export interface JobContext {
  readonly job: Job;
  /** Aborted with a StopReason when the job must stop after its current step. */
  readonly signal: AbortSignal;
  emit(event: JobEventInit): void;
  progress(p: Partial<Omit<JobProgress, "$typeName">>): void;
  /** Records the latest resumable checkpoint, so a restart resumes from it. */
  setTrainingState(ref: CheckpointRef): void;
  /** The tracer whose active span is the job's span: per-step spans become its children. */
  readonly tracer: Tracer;
}

/**
 * Does the work of one job; resolves the result checkpoint and its lineage (root first,
 * the result last), or undefined when it stopped early because the signal asked it to
 * (after writing a training checkpoint).
 */
export type JobWork = (ctx: JobContext) => Promise<{ result: CheckpointRef; lineage: CheckpointRef[] } | undefined>;

/** Maps a work function's failure to the error recorded on the job (with its ErrorInfo). */
export type ErrorMapper = (err: unknown) => ConnectError;

/**
 * Jobs of every kind. Errors are RPC errors: JOB_NOT_FOUND for an unknown id or a job of
 * another kind, INVALID_ARGUMENT for a bad page token, UNAVAILABLE while shutting down.
 *
 * Tenancy (docs/security.md, "Tenancy"): `create` records the caller's tenant on the job
 * ("" without authentication). Every other call takes `tenant`, the one tenant whose jobs
 * the call may see: another tenant's job is JOB_NOT_FOUND exactly as an unknown id, and
 * List leaves other tenants' jobs out before paging. Undefined: every job (no
 * authentication, or an admin).
 */
export interface JobExecutor {
  /**
   * Creates a QUEUED job owned by `tenant`; the caller's active span becomes the link of the
   * job's trace. With `maxActive` > 0 the tenant's job quota is checked atomically with the
   * creation: refused (jobQuotaExceeded) when it already has that many jobs of any kind not
   * final (queued, running, cancelling). With `requestId` the job's id is jobIdFor's: when
   * that job exists already it is returned as it is (sameRequest), not made again.
   */
  create(kind: JobKind, spec: JobSpec, tenant?: string, maxActive?: number, requestId?: string): Promise<Job>;
  get(kind: JobKind, id: string, tenant?: string): Promise<Job>;
  /** Jobs of a kind, newest first; the page token is opaque to clients. */
  list(kind: JobKind, pageSize: number, pageToken: string, tenant?: string): Promise<{ jobs: Job[]; nextPageToken: string }>;
  /**
   * Jobs of every kind not final yet (queued, running, cancelling) owned by `tenant`
   * (undefined: every tenant's): what a delete checks its checkpoint or dataset against.
   */
  unfinished(tenant?: string): Promise<Job[]>;
  /** Cancels a queued job at once, a running one after its current step; final jobs are returned as they are. */
  cancel(kind: JobKind, id: string, tenant?: string): Promise<Job>;
  /**
   * The job's events from the first (or after `afterSequence`, to resume), then live ones;
   * ends after the final state change.
   */
  watch(kind: JobKind, id: string, signal: AbortSignal, afterSequence?: number, tenant?: string): AsyncIterable<JobEvent>;
  /** Stops taking jobs, asks running ones to checkpoint and stop, and waits for them. */
  shutdown(): Promise<void>;
  /**
   * Tells `listener` whether this executor can take new jobs, at once and on every change:
   * not while its queue cannot be reached, nor while another process holds the jobs folder
   * (`why` says which). Returns what stops the telling. Absent: always.
   */
  watchAvailability?(listener: (available: boolean, why?: string) => void): () => void;
}

/** Whether a job is visible to a call limited to `tenant` (undefined: every job). */
export function visibleTo(job: Job, tenant: string | undefined): boolean {
  return tenant === undefined || job.tenant === tenant;
}

/** The jobs not final of `tenant` (undefined: every tenant's). */
export function unfinishedOf(jobs: Job[], tenant: string | undefined): Job[] {
  return jobs.filter((j) => !FINAL.has(j.state) && visibleTo(j, tenant));
}

/** Metric names of the executors, for the runbook and its alerts. */
export const JOB_METRICS = {
  /** Gauge: jobs by vaccine.job.kind and vaccine.job.state (queued, running). */
  jobs: "vaccine.jobs",
  /** Counter: jobs that reached a final state, by kind and state (succeeded, failed, cancelled). */
  finished: "vaccine.jobs.finished",
} as const;
