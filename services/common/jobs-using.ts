/**
 * What an unfinished job uses: the checkpoints and datasets its spec names (parent, data, a
 * method's or a guard's data) and the training state it resumes from. A delete of one of
 * them is refused with FAILED_PRECONDITION (CHECKPOINT_IN_USE, DATASET_IN_USE): the job would
 * fail when it starts or resumes. With tenancy only the caller's own jobs count, as only its
 * own checkpoints do; another tenant's jobs use what that tenant owns, which stays.
 */
import { reflect } from "@bufbuild/protobuf/reflect";
import { Code, type ConnectError } from "@connectrpc/connect";
import { CheckpointRefSchema, type CheckpointRef as CheckpointRefMessage, type DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import { JobSchema, JobState, type Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError } from "../platform/errors.ts";
import { datasetHex } from "../runtime/pipeline/datasets.ts";
import { checkpointHexOf } from "../runtime/store/store.ts";
import type { SuiteDeps } from "./deps.ts";
import { visibleTenant, type OwnedKind, type Scope } from "./ownership.ts";
import { refsIn } from "./refs.ts";

const REASON: Record<OwnedKind, string> = { checkpoints: "CHECKPOINT_IN_USE", datasets: "DATASET_IN_USE" };

/**
 * FAILED_PRECONDITION when one of the caller's unfinished jobs uses the stored checkpoint or
 * dataset `hex`.
 */
export async function assertNoJobUses(deps: Pick<SuiteDeps, "jobs">, scope: Scope | undefined, kind: OwnedKind, hex: string, uri: string, field: string): Promise<void> {
  if (!deps.jobs) return;
  for (const job of await deps.jobs.unfinished(visibleTenant(scope))) {
    for (const { path, ref } of refsIn(reflect(JobSchema, job), "")) {
      if (hexOf(kind, ref) === hex) throw inUse(kind, uri, job, specField(path), field);
    }
  }
}

function hexOf(kind: OwnedKind, ref: CheckpointRefMessage | DatasetRef): string | undefined {
  if (ref.$typeName === CheckpointRefSchema.typeName) return kind === "checkpoints" ? checkpointHexOf((ref as CheckpointRefMessage).uri) : undefined;
  const source = (ref as DatasetRef).source;
  return kind === "datasets" && source.case === "uri" ? datasetHex(source.value) : undefined;
}

/** A job's field as its Create request names it: `.align.base_checkpoint` is spec.base_checkpoint. */
function specField(path: string): string {
  return path.replace(/^\.(align|fine_tune)\./, "spec.").replace(/^\./, "");
}

function inUse(kind: OwnedKind, uri: string, job: Job, jobField: string, field: string): ConnectError {
  const state = JobState[job.state].toLowerCase();
  return rpcError(Code.FailedPrecondition, REASON[kind], `${uri} is the ${jobField} of job ${job.id} (${state}): cancel the job or wait for it to end`, {
    field,
    job_id: job.id,
    job_field: jobField,
  });
}
