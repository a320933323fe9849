/**
 * What a job's worker thread (training-worker.ts) and the thread that started it
 * (threaded-work.ts) send each other: the JobContext calls, the job's telemetry and the
 * outcome, as structured-clone-safe values.
 */
import type { HrTime, SpanKind, SpanStatus } from "@opentelemetry/api";
import type { StoreConfig } from "../runtime/store/create-store.ts";
import type { CheckpointRef } from "../runtime/store/store.ts";
import type { JobEventInit, StopReason } from "./executor.ts";
import type { Stage } from "./spec.ts";

export interface TrainingWorkerData {
  stage: Stage;
  /** The job as JobSchema binary: its spec, id and last training state. */
  job: Uint8Array;
  store: StoreConfig;
  /** VACCINE_BACKEND's choice, as the starting thread resolved it. */
  backend: string;
  /** The byte quota of the job's tenant when it started (0: none), see work.ts. */
  storedBytesQuota: number;
}

/** A finished span of the worker; parentId undefined means a child of the job's span. */
export interface SpanRecord {
  id: number;
  parentId?: number;
  name: string;
  kind: SpanKind;
  start: HrTime;
  end: HrTime;
  attributes: Record<string, unknown>;
  status?: SpanStatus;
  events: { name: string; time: HrTime; attributes?: Record<string, unknown> }[];
}

export type SyncInstrument = "histogram" | "counter" | "upDownCounter" | "gauge";

export type FromWorker =
  | { t: "emit"; event: JobEventInit }
  | { t: "progress"; progress: Record<string, unknown> }
  | { t: "trainingState"; ref: CheckpointRef }
  | { t: "span"; span: SpanRecord }
  | { t: "metric"; instrument: SyncInstrument; name: string; options?: Record<string, unknown>; value: number; attributes?: Record<string, unknown> }
  | { t: "done"; outcome: { result: CheckpointRef; lineage: CheckpointRef[] } | undefined }
  /** status: the mapped error as google.rpc.Status binary; aborted: the backend itself failed. */
  | { t: "failed"; status: Uint8Array; aborted: boolean; message: string };

export type ToWorker = { t: "stop"; reason: StopReason };
