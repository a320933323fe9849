/**
 * RepNoise, representation noising (Rosati et al., NeurIPS 2024, "Representation Noising:
 * A Defence Mechanism Against Harmful Finetuning", arXiv 2405.14577), as
 * docs/defences.md#repnoise states it. The loss of a step is
 *
 *   l(x) + alpha * (1/L) sum_l MMD^2(H_l, N_l) + beta * mean_t -log(1 - p_t + 1e-6)
 *
 *   x      the training (alignment: harmless) batch, l its causal LM loss
 *   H_l    hidden states after layer l of a harmful batch, one row per real (unpadded) token
 *   N_l    as many rows of standard Gaussian noise, drawn from (seed, step, layer)
 *   MMD^2  biased estimate with the kernel k(a, b) = sum_c exp(-||a - b||^2 / (c * d)),
 *          d the hidden size, c in MMD_BANDWIDTHS (fixed, so no gradient flows through them)
 *   p_t    the model's probability of harmful answer token t: the last term is the bounded
 *          ascent ("- beta * l_ascent" with l_ascent = mean log(1 - p_t)), which pushes the
 *          harmful answers' likelihood down but, unlike plain ascent on their cross-entropy,
 *          is bounded below by 0 and fades as p_t -> 0, so it cannot run away
 *
 * The gradient is linear in the terms, so the step takes it in two passes (each its own
 * span): "harmful" (the MMD and ascent terms on the harmful batch) and "update" (l on the
 * training batch, then the update with the sum). alpha = beta = 0 is therefore exactly the
 * SFT step on l when LoRA dropout is 0.
 */
import * as tf from "@tensorflow/tfjs";
import type { LlamaModel } from "../model/llama.ts";
import { linearT, matmul } from "../model/llama.ts";
import { IGNORE_INDEX } from "../model/loss.ts";
import type { LoraAdapter } from "../model/lora.ts";
import { Rng } from "../rng.ts";
import type { HostTensors } from "../host-tensor.ts";
import { checkCursor, cursorState, type HarmfulBatches } from "./harmful-batches.ts";
import { disposeBatch } from "./loop.ts";
import { lossAndGrads, valueAndGrads, type StepFunction, type StepInput, type StepOutput, type TrainBatch } from "./step.ts";

/** c of the kernels exp(-||a - b||^2 / (c * d)): five scales a factor 2 apart, around the distance of two N(0, I) draws (2d). */
export const MMD_BANDWIDTHS = [0.5, 1, 2, 4, 8] as const;

/** Keeps -log(1 - p) finite when p rounds to 1: the ascent term is at most -log(1e-6) ~ 13.8 per token. */
export const ASCENT_FLOOR = 1e-6;

export interface RepNoiseOptions {
  alpha: number;
  beta: number;
  /** The run's seed: the noise is a function of (seed, step). */
  seed: number;
}

/**
 * Biased (V-statistic) squared MMD between the rows of x ([n, d]) and y ([m, d]):
 * mean k(x, x') + mean k(y, y') - 2 mean k(x, y) over all pairs.
 */
export function mmd2(x: tf.Tensor2D, y: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const d = x.shape[1];
    const kernelMean = (a: tf.Tensor2D, b: tf.Tensor2D) => {
      // ||a - b||^2 expanded; relu removes the tiny negatives rounding leaves on the diagonal.
      const sq = a.square().sum(1).reshape([-1, 1]).add(b.square().sum(1).reshape([1, -1])).sub(linearT(a, b).mul(2)).relu();
      return tf.addN(MMD_BANDWIDTHS.map((c) => sq.div(-c * d).exp())).mean();
    };
    return kernelMean(x, x).add(kernelMean(y, y)).sub(kernelMean(x, y).mul(2)) as tf.Scalar;
  });
}

/** Flat indices (b * T + t) of the unpadded positions of a batch. */
export function realPositions(batch: TrainBatch): number[] {
  const mask = batch.attentionMask.dataSync();
  return Array.from(mask.keys()).filter((i) => mask[i] !== 0);
}

/** mean over labelled tokens of -log(1 - p_t + 1e-6), with the shift and -100 mask of causalLmLoss; 0 without labelled tokens. */
export function boundedAscent(logits: tf.Tensor3D, labels: tf.Tensor2D): tf.Scalar {
  const [b, t, vocab] = logits.shape;
  return tf.tidy(() => {
    const target = labels.slice([0, 1], [b, t - 1]).toInt();
    const keep = target.notEqual(IGNORE_INDEX).toFloat();
    const safe = tf.where(target.notEqual(IGNORE_INDEX), target, tf.zerosLike(target));
    const logp = tf.logSoftmax(logits.slice([0, 0, 0], [b, t - 1, vocab])).mul(tf.oneHot(safe, vocab)).sum(-1);
    const penalty = tf.scalar(1 + ASCENT_FLOOR).sub(logp.exp()).log().neg();
    return penalty.mul(keep).sum().div(keep.sum().maximum(1)) as tf.Scalar;
  });
}

/**
 * The harmful part of the loss: alpha * mean over layers of MMD^2(H_l, noise[l]) + beta *
 * boundedAscent. H_l holds the rows of the unpadded positions only (noise[l] has as many),
 * taken with a one-hot product rather than a gather, whose gradient wasm lacks; padding rows
 * would only cost kernel entries, (B x T)^2 instead of (real tokens)^2.
 */
export function harmfulTerms(
  model: LlamaModel,
  lora: LoraAdapter | undefined,
  batch: TrainBatch,
  noise: tf.Tensor2D[],
  alpha: number,
  beta: number,
): tf.Scalar {
  const [b, t] = batch.inputIds.shape;
  const d = model.config.hiddenSize;
  const rows = realPositions(batch);
  return tf.tidy(() => {
    const { logits, layerOutputs } = model.forward(batch.inputIds, batch.attentionMask, { lora, training: true, returnLayerOutputs: true });
    const select = tf.oneHot(tf.tensor1d(rows, "int32"), b * t).toFloat() as tf.Tensor2D;
    const mmd = tf.addN(layerOutputs!.map((h, l) => mmd2(matmul(select, h.reshape([b * t, d]) as tf.Tensor2D), noise[l]))).div(layerOutputs!.length);
    return mmd.mul(alpha).add(boundedAscent(logits, batch.labels).mul(beta)) as tf.Scalar;
  });
}

/** Standard normal noise for each layer, [rows, d], from (seed, step). */
export function noiseAt(seed: number, step: number, layers: number, rows: number, d: number): tf.Tensor2D[] {
  const rng = Rng.derive(seed, `repnoise.noise.${step}`);
  return Array.from({ length: layers }, () => tf.tensor2d(rng.normalArray(rows * d, 1), [rows, d]));
}

export class RepNoiseStep implements StepFunction {
  readonly name = "repnoise";

  constructor(
    readonly options: RepNoiseOptions,
    private readonly harmful: HarmfulBatches,
  ) {
    for (const name of ["alpha", "beta"] as const) {
      const v = options[name];
      if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${name} must be a finite number >= 0, got ${v}`);
    }
  }

  run(input: StepInput): StepOutput {
    const { model, lora, step } = input;
    const { alpha, beta, seed } = this.options;
    const batch = this.harmful.at(step);
    const noise = noiseAt(seed, step, model.config.numHiddenLayers, realPositions(batch).length, model.config.hiddenSize);
    let harm: ReturnType<typeof valueAndGrads> | undefined;
    try {
      harm = input.phase("harmful", () => valueAndGrads(input.params, () => harmfulTerms(model, lora, batch, noise, alpha, beta)));
      const extra = harm;
      return input.phase("update", () => {
        const { loss, grads } = lossAndGrads(input);
        const combined = new Map<string, tf.Tensor>();
        for (const [name, g] of grads) {
          combined.set(name, g.add(extra.grads.get(name)!));
          g.dispose();
        }
        const total = loss + extra.loss;
        return { loss: total, gradNorm: input.update(total, combined), perturbationNorm: 0 };
      });
    } finally {
      disposeBatch(batch);
      noise.forEach((n) => n.dispose());
      harm?.grads.forEach((g) => g.dispose());
    }
  }

  /** One harmful batch per step: the cursor is the step (the noise, too, is a function of the step). */
  exportState(step: number): HostTensors {
    return cursorState(step);
  }

  importState(state: HostTensors, step: number): void {
    checkCursor(state, step);
  }
}
