/**
 * What every vaccine service handler shares in one process: the checkpoint store, the
 * loaded-checkpoint cache, the shipped checkpoints' refs, telemetry and the logger. Of the jobs
 * only the unfinished ones are here, for deletes; Align and FineTune take the job executor
 * (see suite/services.ts).
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import type { Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { Logger } from "../platform/log.ts";
import type { CallBounds } from "./bounds.ts";
import type { BatchWindow } from "./call-batcher.ts";
import type { CallSlots } from "./call-slots.ts";
import type { Quotas } from "./quotas.ts";
import type { BuiltinRefs } from "../runtime/pipeline/builtins.ts";
import type { CheckpointCache } from "../runtime/pipeline/checkpoint-cache.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";

export interface UploadLimits {
  maxDatasetBytes: number;
  maxCheckpointBytes: number;
  maxFileBytes: number;
}

/** The part of the job executor (jobs/executor.ts) deletes need, declared here since common sits below jobs. */
export interface UnfinishedJobs {
  /** Jobs not final of `tenant` (undefined: every tenant's). */
  unfinished(tenant?: string): Promise<Job[]>;
}

export interface SuiteDeps {
  store: CheckpointStore;
  /** Loaded checkpoints for Embed and Score. */
  checkpoints: CheckpointCache;
  /** Refs of the shipped checkpoints once seeded into the store (see seedBuiltins). */
  builtins: BuiltinRefs;
  /** Upload limits of DatasetService and CheckpointService, in bytes. */
  uploads: UploadLimits;
  /** Peak memory one training job may need, in MiB (VACCINE_JOB_MEMORY_LIMIT_MB); unset: no admission check. */
  jobMemoryLimitMb?: number;
  /** Per-tenant quotas, enforced only with tenancy on (docs/security.md); unset: no limits. */
  quotas?: Quotas;
  /** Per-call bounds of requests; unset ones take DEFAULT_BOUNDS (see bounds.ts). */
  bounds?: Partial<CallBounds>;
  /** How Embed and Moderate calls are batched (call-batcher.ts); unset: DEFAULT_BATCH_WINDOW. */
  batching?: BatchWindow;
  /** Long inference calls at once (VACCINE_INFERENCE_CONCURRENCY, call-slots.ts); unset: a bound of DEFAULT_INFERENCE_CONCURRENCY per service. */
  inferenceSlots?: CallSlots;
  /** The unfinished jobs, whose inputs deletes refuse (jobs-using.ts): the executor's, or read where it keeps them (jobs/jobs-view.ts). Unset: not checked. */
  jobs?: UnfinishedJobs;
  tracer: Tracer;
  meter: Meter;
  logger: Logger;
}
