/**
 * What both executors (local-executor.ts, queue/queue-executor.ts) do alike at Create: name
 * the kind, make the QUEUED job, and refuse while shutting down.
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { Code, type ConnectError } from "@connectrpc/connect";
import { JobKind, JobProgressSchema, JobSchema, JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError } from "../platform/errors.ts";
import type { JobSpec } from "./executor.ts";

/** A kind's name in job ids, span names and metric attributes. */
export const KIND_NAME: Record<number, string> = { [JobKind.ALIGN]: "align", [JobKind.FINE_TUNE]: "finetune" };

/** The ids newJob gives: the kind's name and a random UUID. */
export const JOB_ID = /^(align|finetune)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** NOT_FOUND for a job that does not exist, or that the caller may not see (the same answer). */
export function jobNotFound(id: string): ConnectError {
  return rpcError(Code.NotFound, "JOB_NOT_FOUND", `job "${id}" not found`, { job_id: id });
}

/** A new QUEUED job of the tenant ("" without tenancy), with an id of its kind. */
export function newJob(kind: JobKind, spec: JobSpec, tenant: string): Job {
  return create(JobSchema, {
    id: `${KIND_NAME[kind]}-${randomUUID()}`,
    kind,
    state: JobState.QUEUED,
    createTime: timestampNow(),
    progress: create(JobProgressSchema, {}),
    spec,
    tenant,
  });
}
