/**
 * Job specs from the contracts to the runtime: every unset field takes the reference
 * default of docs/method.md#defaults (alignment and user fine-tuning differ in LoRA alpha,
 * learning rate and epochs), so "unset" always means the documented value.
 */
import type { LoraConfig as LoraProto, TrainingConfig } from "../../gen/vaccine/v1/common_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { LINEAR_MODULES, type LinearModule } from "../runtime/model/llama.ts";
import type { LoraConfig } from "../runtime/model/lora.ts";
import { checkpointRefOf } from "../common/refs.ts";
import type { AlignmentMethod } from "../runtime/pipeline/train-adapter.ts";
import type { CheckpointRef } from "../runtime/store/store.ts";
import type { TrainOptions } from "../runtime/train/loop.ts";

export type Stage = "align" | "finetune";

/** The reference's settings (Llama-2-7B scale), per stage. */
export const REFERENCE = {
  align: { rank: 8, alpha: 4, dropout: 0.1, learningRate: 1e-3, epochs: 50 },
  finetune: { rank: 8, alpha: 1, dropout: 0.1, learningRate: 1e-5, epochs: 20 },
  batchSize: 5,
  maxSequenceLength: 200,
  warmupRatio: 0.1,
  weightDecay: 0.1,
  gradClip: 1,
  checkpointEvery: 50,
  rho: 2,
} as const;

/** The checkpoint a stage trains on: the base model for alignment, the aligned one for fine-tuning. */
export function parentOf(stage: Stage, spec: AlignSpec | FineTuneSpec): CheckpointRef {
  return checkpointRefOf(stage === "align" ? (spec as AlignSpec).baseCheckpoint : (spec as FineTuneSpec).alignedCheckpoint);
}

export function loraOf(stage: Stage, lora: LoraProto | undefined): LoraConfig {
  const ref = REFERENCE[stage];
  return {
    r: lora?.rank ?? ref.rank,
    alpha: lora?.alpha ?? ref.alpha,
    dropout: lora?.dropout ?? ref.dropout,
    targetModules: lora?.targetModules.length ? (lora.targetModules as LinearModule[]) : [...LINEAR_MODULES],
  };
}

export function trainingOf(stage: Stage, t: TrainingConfig | undefined): { options: TrainOptions; checkpointEvery: number } {
  return {
    options: {
      learningRate: t?.learningRate ?? REFERENCE[stage].learningRate,
      epochs: t?.epochs ?? REFERENCE[stage].epochs,
      maxSteps: t?.maxSteps,
      batchSize: t?.batchSize ?? REFERENCE.batchSize,
      maxSequenceLength: t?.maxSequenceLength ?? REFERENCE.maxSequenceLength,
      warmupRatio: t?.warmupRatio ?? REFERENCE.warmupRatio,
      weightDecay: t?.weightDecay ?? REFERENCE.weightDecay,
      gradClip: t?.gradClip ?? REFERENCE.gradClip,
      seed: t?.seed ?? 0,
    },
    checkpointEvery: t?.checkpointEvery ?? REFERENCE.checkpointEvery,
  };
}

export function methodOf(spec: AlignSpec | FineTuneSpec, stage: Stage): AlignmentMethod {
  if (stage === "finetune" || !("method" in spec) || spec.method.case !== "vaccine") return { kind: "sft" };
  return { kind: "vaccine", rho: spec.method.value.rho ?? REFERENCE.rho, refreshEvery: spec.method.value.refreshEvery ?? 1 };
}
