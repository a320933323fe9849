/**
 * What both executors (local-executor.ts, queue/queue-executor.ts) do alike at Create: name
 * the kind, make the QUEUED job, and refuse while shutting down.
 */
import { create, equals } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createHash, randomUUID } from "node:crypto";
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

/**
 * A new QUEUED job of the tenant ("" without tenancy), with an id of its kind: random, or
 * with a request_id the one jobIdFor gives, so a retried Create finds the job it made.
 */
export function newJob(kind: JobKind, spec: JobSpec, tenant: string, requestId = ""): Job {
  return create(JobSchema, {
    id: requestId ? jobIdFor(kind, tenant, requestId) : `${KIND_NAME[kind]}-${randomUUID()}`,
    kind,
    state: JobState.QUEUED,
    createTime: timestampNow(),
    progress: create(JobProgressSchema, {}),
    spec,
    tenant,
    requestId,
  });
}

/**
 * The id of the job a tenant's Create with `requestId` makes: a digest of the three shaped as
 * a UUID, so every process (and replica) finds it without an index, and tenants never share one.
 */
export function jobIdFor(kind: JobKind, tenant: string, requestId: string): string {
  const h = createHash("sha256").update(`${KIND_NAME[kind]}\0${tenant}\0${requestId}`).digest("hex");
  return `${KIND_NAME[kind]}-${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The job a retried Create (same request_id) gets: `prior`, unless it asked for something else. */
export function sameRequest(prior: Job, spec: JobSpec): Job {
  if (!equals(JobSchema, create(JobSchema, { spec: prior.spec }), create(JobSchema, { spec }))) {
    throw rpcError(Code.AlreadyExists, "REQUEST_ID_REUSED", `request_id "${prior.requestId}" made job ${prior.id} with another spec; use a new request_id for a new job`, {
      field: "request_id",
      job_id: prior.id,
    });
  }
  return prior;
}
