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
 * SFT step on l when LoRA dropout is 0. On a data-parallel shard the MMD is the whole batch's
 * (shardedMmd) and the ascent the shard's part of the whole batch's mean.
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
import { isLead, type Shard } from "./shard.ts";
import { lossAndGrads, scaledToBatch, trainingForward, valueAndGrads, type StepFunction, type StepInput, type StepOutput, type TrainBatch } from "./step.ts";

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
 * mean k(x, x') + mean k(y, y') - 2 mean k(x, y) over all pairs. Differentiable in x only (y
 * is the noise): the forward computes the closed-form gradient from the same kernel matrices
 * (mmd2Part) and the tape keeps that [n, d] gradient alone, not each layer's dozen or so
 * (harmful tokens)^2 matrices, which on 8 layers of 760 tokens took more than the 4 GiB heap.
 */
export function mmd2(x: tf.Tensor2D, y: tf.Tensor2D): tf.Scalar {
  const op = tf.customGrad((xs: tf.Tensor | tf.GradSaveFunc, save: tf.Tensor | tf.GradSaveFunc) => {
    const { value, grad } = mmd2Part(xs as tf.Tensor2D, y, xs as tf.Tensor2D, true);
    (save as tf.GradSaveFunc)([grad!]);
    return { value, gradFunc: (dy: tf.Tensor, [g]: tf.Tensor[]) => g.mul(dy) };
  });
  return op(x) as tf.Scalar;
}

/**
 * What rows `own` of x add to MMD^2(x, y) (sum over them of sum_j k(x_i, x_j) / n^2 -
 * 2 sum_j k(x_i, y_j) / (n m), plus mean k(y, y) when withNoise), and the gradient of MMD^2
 * with respect to those rows in closed form: with D_ij = ||x_i - z_j||^2 and W_ij = dk/dD,
 * d mean_ij k(x_i, z_j) / dx_i = (2 / (n m)) sum_j W_ij (x_i - z_j), twice that for z = x
 * (where relu clamps D, x_i = z_j: no term either way). Over the rows of x split in parts
 * (data-parallel shards), the parts add up to MMD^2 and its gradient, the noise term taken once.
 * Each pair of inputs' kernel matrices serve both, and are freed before the next pair's.
 */
function mmd2Part(x: tf.Tensor2D, y: tf.Tensor2D, own: tf.Tensor2D | undefined, withNoise: boolean): { value: tf.Scalar; grad?: tf.Tensor2D } {
  const [n, d] = x.shape;
  const m = y.shape[0];
  // sum_ij k(a_i, b_j) and, with pull, sum_j W_ij (a_i - b_j) for each row of a.
  const kernel = (a: tf.Tensor2D, b: tf.Tensor2D, pull: boolean) =>
    tf.tidy(() => {
      const sq = squaredDistances(a, b);
      const k = MMD_BANDWIDTHS.map((c) => sq.div(-c * d).exp());
      const sum = tf.addN(k).sum() as tf.Scalar;
      if (!pull) return { sum };
      const w = tf.addN(k.map((kc, i) => kc.mul(-1 / (MMD_BANDWIDTHS[i] * d))));
      return { sum, pull: w.sum(1).reshape([-1, 1]).mul(a).sub(matmul(w, b)) as tf.Tensor2D };
    });
  const noise = withNoise ? tf.tidy(() => kernel(y, y, false).sum.div(m * m) as tf.Scalar) : undefined;
  if (!own) return { value: noise ?? tf.scalar(0) };
  const xx = kernel(own, x, true);
  const xy = kernel(own, y, true);
  return tf.tidy(() => {
    const part = xx.sum.div(n * n).sub(xy.sum.mul(2 / (n * m)));
    const value = (noise ? part.add(noise) : part) as tf.Scalar;
    const grad = xx.pull!.mul(4 / (n * n)).sub(xy.pull!.mul(4 / (n * m))) as tf.Tensor2D;
    tf.dispose([xx.sum, xx.pull!, xy.sum, xy.pull!, ...(noise ? [noise] : [])]);
    return { value, grad };
  });
}

/** ||a_i - b_j||^2 for every pair of rows, expanded; relu removes the tiny negatives rounding leaves on the diagonal. */
function squaredDistances(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  return a.square().sum(1).reshape([-1, 1]).add(b.square().sum(1).reshape([1, -1])).sub(linearT(a, b).mul(2)).relu() as tf.Tensor2D;
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
  place?: RealRows,
): tf.Scalar {
  const [b, t] = batch.inputIds.shape;
  const d = model.config.hiddenSize;
  const rows = realPositions(batch);
  return tf.tidy(() => {
    // Every shard runs the forward pass, rows or not: the dropout masks are drawn in step.
    const { logits, layerOutputs } = trainingForward(model, lora, batch, { returnLayerOutputs: true });
    const select = rows.length > 0 ? (tf.oneHot(tf.tensor1d(rows, "int32"), b * t).toFloat() as tf.Tensor2D) : undefined;
    const hs = select ? layerOutputs!.map((h) => matmul(select, h.reshape([b * t, d]) as tf.Tensor2D)) : [];
    const mmd = place ? shardedMmd(hs, noise, place) : tf.addN(hs.map((h, l) => mmd2(h, noise[l]))).div(hs.length);
    return mmd.mul(alpha).add(scaledToBatch(boundedAscent(logits, batch.labels), batch).mul(beta)) as tf.Scalar;
  });
}

/** Where a shard's real rows sit among the whole batch's (shards hold contiguous rows, in rank order). */
export interface RealRows {
  shard: Shard;
  offset: number;
  total: number;
}

export function realRowsOf(shard: Shard, own: number): RealRows {
  const counts = new Float32Array(shard.shards);
  counts[shard.rank] = own;
  const all = shard.sum(counts);
  return { shard, offset: all.subarray(0, shard.rank).reduce((s, x) => s + x, 0), total: all.reduce((s, x) => s + x, 0) };
}

/**
 * A shard's part of mean_l MMD^2(H_l, noise[l]) over the whole batch's rows, from its own rows
 * of each H_l (none for a stand-in): the rows are gathered (each shard places its own in
 * zeros, and the sum over shards is the whole), and each shard computes what its rows add to
 * the value and its rows of the gradient (mmd2Part; the noise's own term on the lead shard),
 * so the shards' values and gradients add up to one thread's and each does its share of the
 * kernel matrices.
 */
function shardedMmd(own: tf.Tensor2D[], noise: tf.Tensor2D[], { shard, offset, total }: RealRows): tf.Scalar {
  const layers = noise.length;
  const d = noise[0].shape[1];
  const gather = (hs: tf.Tensor2D[]) => {
    const placed = new Float32Array(layers * total * d);
    hs.forEach((h, l) => placed.set(h.dataSync() as Float32Array, (l * total + offset) * d));
    const whole = shard.sum(placed);
    return noise.map((_, l) => tf.tensor2d(whole.subarray(l * total * d, (l + 1) * total * d), [total, d]));
  };
  // Each layer's part of the value and gradient of the mean over layers.
  const partsOf = (hs: tf.Tensor2D[]) =>
    tf.tidy(() => {
      const whole = gather(hs);
      const parts = whole.map((h, l) => mmd2Part(h, noise[l], hs[l], isLead(shard)));
      const value = tf.addN(parts.map((p) => p.value)).div(layers) as tf.Scalar;
      return { value, grads: parts.flatMap((p) => (p.grad ? [p.grad.div(layers) as tf.Tensor2D] : [])) };
    });
  if (own.length === 0) {
    const { value, grads } = partsOf([]);
    tf.dispose(grads);
    return value;
  }
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const { value, grads } = partsOf(args as tf.Tensor2D[]);
    save(grads);
    return { value, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => saved.map((g) => g.mul(dy)) };
  });
  return op(...own) as tf.Scalar;
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
    const batch = this.harmful.at(step, input.shard);
    const own = realPositions(batch).length;
    const place = input.shard && realRowsOf(input.shard, own);
    const noise = noiseAt(seed, step, model.config.numHiddenLayers, place ? place.total : own, model.config.hiddenSize);
    let harm: ReturnType<typeof valueAndGrads> | undefined;
    try {
      harm = input.phase("harmful", () => valueAndGrads(input.params, () => harmfulTerms(model, lora, batch, noise, alpha, beta, place)));
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
