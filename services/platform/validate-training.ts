import type { CheckpointRef, DatasetRef, LoraConfig, TrainingConfig } from "../../gen/vaccine/v1/common_pb.ts";
import type { RequestValidator } from "./validate.ts";

/** The modules LoRA may adapt, as named in Hugging Face Llama checkpoints. */
export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** A CheckpointRef: both the URI and a well-formed digest are required. */
export function checkCheckpointRef(v: RequestValidator, field: string, ref: CheckpointRef | undefined, required = true): void {
  if (!ref) {
    if (required) v.fail(field, "is required");
    return;
  }
  v.required(`${field}.uri`, ref.uri);
  if (!DIGEST.test(ref.digest)) v.fail(`${field}.digest`, 'must be "sha256:" followed by 64 lowercase hex digits');
}

/** A DatasetRef: a store URI or a builtin dataset with sane generator settings. */
export function checkDatasetRef(v: RequestValidator, field: string, ref: DatasetRef | undefined, required = true): void {
  const source = ref?.source;
  if (!source || source.case === undefined) {
    if (required) v.fail(field, "needs a uri or a builtin dataset");
    return;
  }
  if (source.case === "uri") {
    v.required(`${field}.uri`, source.value);
    return;
  }
  const b = source.value;
  v.required(`${field}.builtin.name`, b.name);
  v.number(`${field}.builtin.size`, b.size, { min: 1, max: 1_000_000, integer: true });
  v.number(`${field}.builtin.harmful_ratio`, b.harmfulRatio, { min: 0, max: 1 });
}

export function checkLora(v: RequestValidator, field: string, lora: LoraConfig | undefined): void {
  if (!lora) return;
  v.number(`${field}.rank`, lora.rank, { min: 1, max: 4096, integer: true });
  v.number(`${field}.alpha`, lora.alpha, { above: 0 });
  v.number(`${field}.dropout`, lora.dropout, { min: 0, below: 1 });
  lora.targetModules.forEach((m, i) => v.oneOf(`${field}.target_modules[${i}]`, m, LORA_TARGETS));
}

export function checkTraining(v: RequestValidator, field: string, t: TrainingConfig | undefined): void {
  if (!t) return;
  v.number(`${field}.learning_rate`, t.learningRate, { above: 0 });
  v.number(`${field}.epochs`, t.epochs, { min: 1, integer: true });
  v.number(`${field}.max_steps`, t.maxSteps, { min: 1, integer: true });
  v.number(`${field}.batch_size`, t.batchSize, { min: 1, max: 4096, integer: true });
  v.number(`${field}.max_sequence_length`, t.maxSequenceLength, { min: 2, max: 65_536, integer: true });
  v.number(`${field}.warmup_ratio`, t.warmupRatio, { min: 0, below: 1 });
  v.number(`${field}.weight_decay`, t.weightDecay, { min: 0 });
  v.number(`${field}.grad_clip`, t.gradClip, { above: 0 });
  v.number(`${field}.checkpoint_every`, t.checkpointEvery, { min: 1, integer: true });
}

/** page_size and page_token of the List RPCs. */
export function checkPage(v: RequestValidator, pageSize: number, pageToken: string): void {
  v.number("page_size", pageSize, { min: 0, max: 1000, integer: true });
  if (pageToken !== "" && !/^[A-Za-z0-9_-]{1,512}$/.test(pageToken)) v.fail("page_token", "is not a token this server issued");
}

/** A job id in Get, Cancel and Watch. */
export function checkJobId(v: RequestValidator, jobId: string): void {
  v.required("job_id", jobId);
}
