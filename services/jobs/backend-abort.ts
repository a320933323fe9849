/**
 * A training backend that aborted: the wasm heap ran past its maximum ("memory access out
 * of bounds", "Aborted()"), an allocation failed, or the worker thread hosting the job
 * died. Such a backend is unusable afterwards, so its worker is discarded and the job fails
 * with RESOURCE_EXHAUSTED / TRAINING_BACKEND_ABORTED, saying which settings to lower.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import type { Job } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { rpcError } from "../platform/errors.ts";
import { loraOf, trainingOf, type Stage } from "./spec.ts";

export const BACKEND_ABORTED = "TRAINING_BACKEND_ABORTED";

// What wasm, V8 and tfjs say when memory runs out or the module aborts.
const ABORT_PATTERNS = [
  /memory access out of bounds/i,
  /\bAborted\(/,
  /out of memory/i,
  /Array buffer allocation failed/i,
  /Invalid typed array length/i,
  /Cannot enlarge memory/i,
  /WebAssembly\.Memory/i,
];

/** Whether an error thrown by training means the backend itself failed. */
export function isBackendAbort(err: unknown): boolean {
  if (typeof WebAssembly !== "undefined" && err instanceof WebAssembly.RuntimeError) return true;
  const e = err as { message?: unknown; code?: unknown };
  if (e?.code === "ERR_WORKER_OUT_OF_MEMORY") return true;
  const message = typeof e?.message === "string" ? e.message : String(err);
  return ABORT_PATTERNS.some((p) => p.test(message));
}

/** The job's failure: what happened, the sizes that drove the memory, and what to lower. */
export function backendAbortedError(job: Job, stage: Stage, cause: string): ConnectError {
  const spec = job.spec.value as AlignSpec | FineTuneSpec;
  const { options } = trainingOf(stage, spec.training);
  const lora = loraOf(stage, spec.lora);
  return rpcError(
    Code.ResourceExhausted,
    BACKEND_ABORTED,
    `the training backend aborted (${cause.split("\n")[0].slice(0, 200)}), most likely out of memory at batch_size ${options.batchSize}, ` +
      `max_sequence_length ${options.maxSequenceLength}, LoRA rank ${lora.r}: lower spec.training.batch_size or spec.training.max_sequence_length ` +
      `(or spec.lora.rank) and create the job again; the worker that ran it was discarded`,
    {
      cause: cause.slice(0, 500),
      batch_size: String(options.batchSize),
      max_sequence_length: String(options.maxSequenceLength),
      lora_rank: String(lora.r),
      lower: "spec.training.batch_size,spec.training.max_sequence_length,spec.lora.rank",
    },
  );
}
