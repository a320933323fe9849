/**
 * What one training step computes: a loss and the gradients of the trainable parameters,
 * handed to the loop's update (non-finite check, clipping, AdamW), the same for every
 * method. The SFT and Vaccine steps implement this, and each defence's (docs/defences.md).
 */
import * as tf from "@tensorflow/tfjs";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import type { ForwardOptions, LlamaModel } from "../model/llama.ts";
import type { LoraAdapter } from "../model/lora.ts";
import { causalLmHeadLoss } from "../model/loss.ts";
import type { RowWindow, Shard } from "./shard.ts";

/** A collated batch as tensors; tokens = supervised (labelled, shifted) positions. */
export interface TrainBatch {
  inputIds: tf.Tensor2D;
  attentionMask: tf.Tensor2D;
  labels: tf.Tensor2D;
  tokens: number;
  /**
   * Set on one shard of a data-parallel step (data-parallel.ts): its share of the whole batch's
   * supervised tokens. Its loss is scaled by it, so the shards' losses and gradients add up
   * to the whole batch's (a mean over all its tokens).
   */
  shareOfBatch?: number;
  /** Set on a shard: which rows of the whole batch it holds (LoRA dropout draws the whole batch's masks, trainingForward). */
  rows?: RowWindow;
}

/** A mean over the batch's supervised tokens, as the shard's part of the whole batch's (TrainBatch.shareOfBatch). */
export function scaledToBatch(mean: tf.Scalar, batch: TrainBatch): tf.Scalar {
  return batch.shareOfBatch === undefined ? mean : mean.mul(batch.shareOfBatch);
}

/**
 * The model's forward pass on a batch, training (LoRA dropout on); a shard's rows take their
 * rows of the masks one thread would draw for the whole batch.
 */
export function trainingForward(model: LlamaModel, lora: LoraAdapter | undefined, batch: TrainBatch, options: Omit<ForwardOptions, "lora" | "training"> = {}) {
  return model.forward(batch.inputIds, batch.attentionMask, trainingOptions(lora, batch, options));
}

/** The batch's loss from a training forward pass (batchHeadLoss of its final hidden states). */
export function trainingLoss(model: LlamaModel, lora: LoraAdapter | undefined, batch: TrainBatch, options: Omit<ForwardOptions, "lora" | "training"> = {}): tf.Scalar {
  const { hidden } = model.states(batch.inputIds, batch.attentionMask, { ...trainingOptions(lora, batch, options), returnHidden: true });
  return batchHeadLoss(model, hidden!, batch);
}

/**
 * The batch's loss (causalLmLoss of the model's logits, see TrainBatch.shareOfBatch for a
 * shard) from final hidden states, the head's product taken with the loss (causalLmHeadLoss).
 */
export function batchHeadLoss(model: LlamaModel, hidden: tf.Tensor3D, batch: TrainBatch): tf.Scalar {
  return scaledToBatch(causalLmHeadLoss(hidden, model.head, batch.labels), batch);
}

function trainingOptions(lora: LoraAdapter | undefined, batch: TrainBatch, options: Omit<ForwardOptions, "lora" | "training">): ForwardOptions {
  if (lora) lora.dropoutWindow = batch.rows;
  return { ...options, lora, training: true };
}

/**
 * The named parts of a step: Vaccine's perturbation pass, the update pass every method has,
 * and the extra passes of the defences (docs/defences.md): T-Vaccine's probe, the passes on
 * harmful data of Booster (at w, then at the shifted w) and RepNoise.
 */
export const PHASES = ["perturbation", "update", "probe", "harmful", "harmful_shifted"] as const;
export type PhaseName = (typeof PHASES)[number];

/** When a part of a step ran, in ms from the step's start (StepMetrics.phases). */
export interface PhaseTiming {
  name: PhaseName;
  startMs: number;
  ms: number;
}

/** Runs a named part of a step; the job layer wraps each in a span, tests just call fn. */
export type PhaseRunner = <T>(name: PhaseName, fn: () => T) => T;

export interface StepInput {
  model: LlamaModel;
  lora?: LoraAdapter;
  /** The trainable parameters by name (LoRA A/B, or every model weight). */
  params: Map<string, tf.Variable>;
  batch: TrainBatch;
  /** 0-based index of this step. */
  step: number;
  phase: PhaseRunner;
  /**
   * Applies the gradients (it takes ownership of them) and returns their norm before
   * clipping; throws TrainingDivergedError on a non-finite loss or gradient.
   */
  update(loss: number, grads: Map<string, tf.Tensor>): number;
  /**
   * Set when `batch` is one shard of a data-parallel step: which shard, and the sums over all
   * shards, through which whole-batch quantities other than the loss and gradients go
   * (Vaccine's norms and kept perturbation, a defence's harmful batch).
   */
  shard?: Shard;
}

export interface StepOutput {
  /** The training loss the step's update was computed from. */
  loss: number;
  /** Global norm of the weight gradient before clipping. */
  gradNorm: number;
  /** Global norm of the perturbation applied (0 without one). */
  perturbationNorm: number;
  /** Lisa's state of this step and the proximal term's value added to the loss (lisa.ts). */
  lisa?: { state: "alignment" | "user"; proximal: number };
}

/**
 * The examples a step trains on, when a step function chooses them (Lisa moves some steps
 * to alignment data): batch `position` of the seeded order of `data` (batches.ts), and the
 * batches of the run's own data taken once this step is done (for the epoch metric).
 */
export interface BatchSource {
  data: ReadonlyArray<Example | string>;
  position: number;
  userBatches: number;
}

export interface StepFunction {
  readonly name: string;
  run(input: StepInput): StepOutput;
  /** Without it, 0-based step k trains on batch k of the run's data. */
  batchSource?(step: number): BatchSource;
  /** State that must survive a resume (Vaccine's reused perturbation), as host tensors; step = the next step's index. */
  exportState?(step: number): HostTensors;
  importState?(state: HostTensors, step: number): void;
  dispose?(): void;
}

/**
 * Loss and parameter gradients of the batch under optional per-layer deltas. Runs inside
 * tidy so that an exception (a NaN check, a shape error) does not leak the intermediates
 * tf.variableGrads would otherwise keep.
 */
export function lossAndGrads(
  input: StepInput,
  deltas?: tf.Tensor[],
): { loss: number; grads: Map<string, tf.Tensor> } {
  const { model, lora, batch } = input;
  return valueAndGrads(input.params, () => trainingLoss(model, lora, batch, { deltas }));
}

/** A scalar function's value and its gradients with respect to the parameters, by name (see lossAndGrads). */
export function valueAndGrads(params: Map<string, tf.Variable>, f: () => tf.Scalar): { loss: number; grads: Map<string, tf.Tensor> } {
  const names = [...params.keys()];
  const vars = names.map((n) => params.get(n)!);
  const { value, grads } = tf.tidy(() => tf.variableGrads(f, vars));
  const byName = new Map<string, tf.Tensor>();
  names.forEach((n, i) => byName.set(n, grads[vars[i].name]));
  const loss = value.dataSync()[0];
  value.dispose();
  return { loss, grads: byName };
}

/** Supervised fine-tuning: one forward/backward pass, no perturbation. */
export class SftStep implements StepFunction {
  readonly name = "sft";

  run(input: StepInput): StepOutput {
    return input.phase("update", () => {
      const { loss, grads } = lossAndGrads(input);
      return { loss, gradNorm: input.update(loss, grads), perturbationNorm: 0 };
    });
  }
}
