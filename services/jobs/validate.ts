/** Request checks of the training-job fields shared by Align and FineTune. */
import type { LoraConfig, TrainingConfig } from "../../gen/vaccine/v1/common_pb.ts";
import type { RequestValidator } from "../platform/validate.ts";
import { LINEAR_MODULES } from "../runtime/model/llama.ts";

export function checkLora(v: RequestValidator, field: string, lora: LoraConfig | undefined): void {
  if (!lora) return;
  v.number(`${field}.rank`, lora.rank, { min: 1, max: 4096, integer: true });
  v.number(`${field}.alpha`, lora.alpha, { above: 0 });
  v.number(`${field}.dropout`, lora.dropout, { min: 0, below: 1 });
  lora.targetModules.forEach((m, i) => v.oneOf(`${field}.target_modules[${i}]`, m, LINEAR_MODULES));
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

/** A job id in Get, Cancel and Watch. */
export function checkJobId(v: RequestValidator, jobId: string): void {
  v.required("job_id", jobId);
}
