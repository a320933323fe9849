/** Request checks of the training-job fields shared by Align and FineTune. */
import type { LoraConfig, TrainingConfig } from "../../gen/vaccine/v1/common_pb.ts";
import type { FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { DEFAULT_BOUNDS, type CallBounds } from "../common/bounds.ts";
import { checkDatasetRef } from "../common/validate-refs.ts";
import type { RequestValidator } from "../platform/validate.ts";
import { LINEAR_MODULES } from "../runtime/model/llama.ts";
import { batchesPerEpoch } from "../runtime/train/batches.ts";
import { GUARD_DEFAULTS } from "./guard-spec.ts";
import { REFERENCE, type Stage } from "./spec.ts";

/** Largest LoRA rank before the model is known; at Create the rank must also fit the model (checkLoraRank). */
export const MAX_LORA_RANK = 1024;

export function checkLora(v: RequestValidator, field: string, lora: LoraConfig | undefined): void {
  if (!lora) return;
  v.number(`${field}.rank`, lora.rank, { min: 1, max: MAX_LORA_RANK, integer: true });
  v.number(`${field}.alpha`, lora.alpha, { above: 0 });
  v.number(`${field}.dropout`, lora.dropout, { min: 0, below: 1 });
  lora.targetModules.forEach((m, i) => v.oneOf(`${field}.target_modules[${i}]`, m, LINEAR_MODULES));
}

export function checkTraining(v: RequestValidator, field: string, t: TrainingConfig | undefined, bounds: CallBounds = DEFAULT_BOUNDS): void {
  if (!t) return;
  v.number(`${field}.learning_rate`, t.learningRate, { above: 0 });
  v.number(`${field}.epochs`, t.epochs, { min: 1, max: bounds.maxSteps, integer: true });
  v.number(`${field}.max_steps`, t.maxSteps, { min: 1, max: bounds.maxSteps, integer: true });
  v.number(`${field}.batch_size`, t.batchSize, { min: 1, max: 4096, integer: true });
  v.number(`${field}.max_sequence_length`, t.maxSequenceLength, { min: 2, max: 65_536, integer: true });
  v.number(`${field}.warmup_ratio`, t.warmupRatio, { min: 0, below: 1 });
  v.number(`${field}.weight_decay`, t.weightDecay, { min: 0 });
  v.number(`${field}.grad_clip`, t.gradClip, { above: 0 });
  v.number(`${field}.checkpoint_every`, t.checkpointEvery, { min: 1, integer: true });
  // With max_steps the size is known now; with epochs only once the dataset is (checkTrainingSize).
  if (t.maxSteps !== undefined && Number.isInteger(t.maxSteps) && t.maxSteps >= 1) checkTrainingTokens(v, field, t.maxSteps, t, bounds);
}

/** The LoRA rank against the model it adapts (at Create, once the parent's config is read): a rank above the width adds nothing but memory. */
export function checkLoraRank(v: RequestValidator, field: string, stage: Stage, lora: LoraConfig | undefined, hiddenSize: number): void {
  const rank = lora?.rank ?? REFERENCE[stage].rank;
  if (rank > hiddenSize) v.fail(`${field}.rank`, `is ${rank}; the rank is bounded by the model's hidden_size, ${hiddenSize}`);
}

/** Steps and tokens of the whole job, once the number of training examples is known (at Create). */
export function checkTrainingSize(v: RequestValidator, field: string, stage: Stage, t: TrainingConfig | undefined, examples: number, bounds: CallBounds = DEFAULT_BOUNDS): void {
  const batch = t?.batchSize ?? REFERENCE.batchSize;
  const steps = t?.maxSteps ?? (t?.epochs ?? REFERENCE[stage].epochs) * batchesPerEpoch(examples, batch);
  if (steps > bounds.maxSteps) v.fail(`${field}.epochs`, `gives ${steps} steps over ${examples} examples; the bound on steps is ${bounds.maxSteps}`);
  else checkTrainingTokens(v, field, steps, t, bounds);
}

function checkTrainingTokens(v: RequestValidator, field: string, steps: number, t: TrainingConfig | undefined, bounds: CallBounds): void {
  const batch = t?.batchSize ?? REFERENCE.batchSize;
  const length = t?.maxSequenceLength ?? REFERENCE.maxSequenceLength;
  const tokens = steps * batch * length;
  if (tokens > bounds.maxTrainingTokens) {
    v.fail(field, `steps x batch_size x max_sequence_length = ${steps} x ${batch} x ${length} = ${tokens} tokens; the bound on training tokens is ${bounds.maxTrainingTokens}`);
  }
}

/** FineTuneSpec.guard: Lisa's cycle lengths and rho, safety mixing's fraction (docs/defences.md#fine-tuning-guards). */
export function checkGuard(v: RequestValidator, guard: FineTuneSpec["guard"], training: TrainingConfig | undefined, bounds: CallBounds = DEFAULT_BOUNDS): void {
  if (guard.case === "lisa") {
    const g = guard.value;
    v.number("spec.lisa.alignment_steps", g.alignmentSteps, { min: 0, max: bounds.maxSteps, integer: true });
    // The run starts in the alignment state: a job no longer than it would never train on the user's data.
    const k1 = g.alignmentSteps ?? GUARD_DEFAULTS.lisa.alignmentSteps;
    const steps = training?.maxSteps;
    if (steps !== undefined && Number.isInteger(k1) && k1 >= steps) v.fail("spec.lisa.alignment_steps", `is ${k1}; the job's ${steps} steps (max_steps) would all train on the alignment data`);
    v.number("spec.lisa.user_steps", g.userSteps, { min: 1, max: bounds.maxSteps, integer: true });
    v.number("spec.lisa.rho", g.rho, { min: 0 });
    checkDatasetRef(v, "spec.lisa.alignment_dataset", g.alignmentDataset, false);
  } else if (guard.case === "safetyMix") {
    v.number("spec.safety_mix.fraction", guard.value.fraction, { min: 0, max: 1 });
    checkDatasetRef(v, "spec.safety_mix.alignment_dataset", guard.value.alignmentDataset, false);
  }
}

/** A job id in Get, Cancel and Watch. */
export function checkJobId(v: RequestValidator, jobId: string): void {
  v.required("job_id", jobId);
  v.length("job_id", jobId, 256);
}
