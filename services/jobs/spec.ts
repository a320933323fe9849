/**
 * Job specs from the contracts to the runtime: every unset field takes the reference
 * default of docs/method.md#defaults (alignment and user fine-tuning differ in LoRA alpha,
 * learning rate and epochs), so "unset" always means the documented value.
 */
import type { DatasetRef, LoraConfig as LoraProto, TrainingConfig } from "../../gen/vaccine/v1/common_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { LINEAR_MODULES, type LinearModule } from "../runtime/model/llama.ts";
import type { LoraConfig } from "../runtime/model/lora.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import type { DatasetSource } from "../runtime/pipeline/datasets.ts";
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

/** The defaults of the defences' papers (docs/defences.md). */
export const DEFENCE_DEFAULTS = {
  tVaccine: { rho: 3, layers: 8, resampleEvery: 20, probeEvery: 200 },
  booster: { lambda: 5, alpha: 0.1 },
  repnoise: { alpha: 1, beta: 0.001 },
} as const;

export function methodOf(spec: AlignSpec | FineTuneSpec, stage: Stage): AlignmentMethod {
  if (stage === "finetune" || !("method" in spec)) return { kind: "sft" };
  const m = spec.method;
  switch (m.case) {
    case "vaccine":
      // rho and rho_relative are exclusive (checked at Create); rho_relative wins should both arrive.
      return { kind: "vaccine", rho: m.value.rhoRelative !== undefined ? { relative: m.value.rhoRelative } : (m.value.rho ?? REFERENCE.rho), refreshEvery: m.value.refreshEvery ?? 1 };
    case "tVaccine": {
      const d = DEFENCE_DEFAULTS.tVaccine;
      const v = m.value;
      return { kind: "t_vaccine", rho: v.rho ?? d.rho, layers: v.layers ?? d.layers, resampleEvery: v.resampleEvery ?? d.resampleEvery, probeEvery: v.probeEvery ?? d.probeEvery };
    }
    case "booster":
      return { kind: "booster", lambda: m.value.lambda ?? DEFENCE_DEFAULTS.booster.lambda, alpha: m.value.alpha ?? DEFENCE_DEFAULTS.booster.alpha };
    case "repnoise":
      return { kind: "repnoise", alpha: m.value.alpha ?? DEFENCE_DEFAULTS.repnoise.alpha, beta: m.value.beta ?? DEFENCE_DEFAULTS.repnoise.beta };
    default:
      return { kind: "sft" };
  }
}

/** The harmful data of a method that reads it (unset: the built-in "harmful" set) and its request field; undefined for the others. */
export function harmfulDatasetOf(spec: AlignSpec | FineTuneSpec, stage: Stage): { field: string; source: DatasetSource } | undefined {
  if (stage === "finetune" || !("method" in spec)) return undefined;
  const m = spec.method;
  const orBuiltin = (field: string, ref: DatasetRef | undefined) => ({ field, source: ref ? datasetSource(ref) : { builtin: { name: "harmful" } } });
  switch (m.case) {
    case "tVaccine":
      return orBuiltin("spec.t_vaccine.probe_dataset", m.value.probeDataset);
    case "booster":
      return orBuiltin("spec.booster.harmful_dataset", m.value.harmfulDataset);
    case "repnoise":
      return orBuiltin("spec.repnoise.harmful_dataset", m.value.harmfulDataset);
    default:
      return undefined;
  }
}
