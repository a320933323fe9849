/**
 * The Vaccine step (Huang et al., NeurIPS 2024), as docs/method.md#the-vaccine-step states it:
 *
 *   pass 1  g_l   = d loss / d delta_l at delta = 0      (delta_l is added to layer l's
 *                                                          attention output A_l)
 *           G     = sqrt(sum_l ||g_l||_F^2)              one norm: all layers, whole batch
 *           eps_l = rho * g_l / (G + 1e-7)
 *   pass 2  grads = d loss(delta = eps) / d (trainable weights)   -> clip, AdamW (loop.ts)
 *
 * The "perturbation" phase is pass 1; the "update" phase is pass 2 and the optimizer step.
 *
 * Pass 1 differentiates with respect to the deltas only, so no weight gradient is
 * computed there. rho = 0 gives eps = 0 and hence exactly the SFT update. With
 * refreshEvery = tau > 1 (accelerated Vaccine) eps is recomputed every tau steps and
 * reused in between. A relative rho ({ relative: r }) becomes r times the attention-output
 * norm of the first batch (docs/method.md#calibrating-rho), measured once and kept in the
 * training state so that a resumed run does not measure again on another batch.
 *
 * Split data-parallel (data-parallel.ts), each thread computes g and eps on its rows of the
 * batch (StepInput.shard), and the norms (G, the attention-output norm, the reported
 * perturbation norm) are of the whole batch: the threads add up their sums of squares. An eps
 * kept for reuse (tau > 1) is the whole batch's on every thread, so it is fitted to a later
 * batch as on one thread; with tau = 1 each thread keeps only its rows (never reused).
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensors } from "../host-tensor.ts";
import { toHost, type LlamaModel } from "../model/llama.ts";
import type { LoraAdapter } from "../model/lora.ts";
import { sumOfSquares } from "./adamw.ts";
import { gatherRows, shardRows, type Shard } from "./shard.ts";
import { batchHeadLoss, lossAndGrads, trainingLoss, type StepFunction, type StepInput, type StepOutput, type TrainBatch } from "./step.ts";

/** The reference's guard against a zero gradient norm. */
export const NORM_EPS = 1e-7;

/** Training-state keys of the kept perturbation, one [B, T, hidden] tensor per layer: EPS_KEY + layer. */
export const EPS_KEY = "vaccine.eps.";

/** Training-state key of the attention-output norm a relative rho was resolved with. */
export const NORM_KEY = "vaccine.attention_norm";

/**
 * g_l = d loss / d delta_l at delta = 0 (= d loss / d A_l) for each layer listed, in that
 * order; the other layers get a zero delta and no gradient, so backpropagation stops at the
 * lowest layer listed. No weight gradient is computed.
 */
export function attentionOutputGrads(
  model: LlamaModel,
  lora: LoraAdapter | undefined,
  batch: TrainBatch,
  layers: readonly number[],
  training = true,
): tf.Tensor3D[] {
  const [b, t] = batch.inputIds.shape;
  return tf.tidy(() => {
    // One buffer of zeros: the layers differentiated get clones of it (tf.grads tells its inputs
    // apart by tensor; a clone shares the buffer), the others it itself: six layers' fills of
    // [8, 100, 256] took 2.0-2.2 ms, one fill and six clones 0.4.
    const zero = tf.zeros([b, t, model.config.hiddenSize]);
    const xs = layers.map(() => zero.clone());
    const lossOf = (...xs: tf.Tensor[]) => {
      const deltas = Array.from({ length: model.config.numHiddenLayers }, () => zero);
      layers.forEach((l, i) => (deltas[l] = xs[i]));
      // The blocks skip the adapters' gradients; the adapter's branch stays (the native
      // projections merge it themselves where that pays: docs/method.md).
      if (training) return trainingLoss(model, lora, batch, { deltas, adapterGradients: false });
      const { hidden } = model.states(batch.inputIds, batch.attentionMask, { lora, deltas, adapterGradients: false, returnHidden: true });
      return batchHeadLoss(model, hidden!, batch);
    };
    return tf.grads(lossOf)(xs) as tf.Tensor3D[];
  });
}

/**
 * rho * g / (G + 1e-7) with G one norm over all the tensors given, or G as given (the whole
 * batch's, when g holds the rows of one shard).
 */
export function scaleToNorm(g: tf.Tensor3D[], rho: number, wholeNorm?: number): tf.Tensor3D[] {
  // G read back (the addon's sum where it runs: no squared copy of every layer's g, 2.4-3.7 ->
  // 1.0-1.2 ms for six layers of [8, 100, 256]).
  const norm = wholeNorm ?? normOf(sumOfSquares(g));
  return tf.tidy(() => {
    const scale = tf.scalar(rho).div(tf.scalar(norm).add(NORM_EPS));
    return g.map((x) => x.mul(scale) as tf.Tensor3D);
  });
}

/**
 * The global L2 norm of every layer's attention output A_l over the real (unpadded) tokens
 * of the batch (of the whole batch, given a shard), without adapter dropout: the size of
 * what the perturbation is added to. Float32, as the tensors are.
 */
export function attentionOutputNorm(model: LlamaModel, lora: LoraAdapter | undefined, batch: TrainBatch, shard?: Shard): number {
  const squares = tf.tidy(() => {
    const { attentionOutputs } = model.states(batch.inputIds, batch.attentionMask, { lora, returnAttentionOutputs: true, training: false });
    const mask = batch.attentionMask.toFloat().expandDims(2);
    return tf.addN(attentionOutputs!.map((a) => a.mul(mask).square().sum())).dataSync()[0];
  });
  return normOf(squares, shard);
}

/**
 * The square root of a sum of squares, over all shards given one, rounded to float32: for a
 * float32 sum, the same value as tfjs's sqrt of it (a double sqrt rounds to the float one).
 */
function normOf(squares: number, shard?: Shard): number {
  return Math.fround(Math.sqrt(shard ? shard.sum([squares])[0] : squares));
}

/** The global L2 norm of tensors holding the batch's rows; for a shard, of the whole batch's. */
export function batchNorm(input: StepInput, tensors: tf.Tensor[]): number {
  return normOf(sumOfSquares(tensors), input.shard);
}

/** rho as set: absolute, or a fraction of the first batch's attention-output norm. */
export type Rho = number | { relative: number };

/** How a relative rho was resolved. */
export interface RhoCalibration {
  rhoRelative: number;
  attentionNorm: number;
  rho: number;
}

/**
 * Pass 1: the worst-case perturbation of the attention outputs of `layers` (default: all)
 * within norm rho, in that order. A shard computes its rows of g and scales them by the whole
 * batch's norm.
 */
export function computePerturbation(input: StepInput, rho: number, layers?: readonly number[]): tf.Tensor3D[] {
  const { model, lora, batch } = input;
  const all = layers ?? Array.from({ length: model.config.numHiddenLayers }, (_, l) => l);
  return tf.tidy(() => {
    const g = attentionOutputGrads(model, lora, batch, all);
    return scaleToNorm(g, rho, input.shard && batchNorm(input, g));
  });
}

/**
 * A stored perturbation fitted to another batch's [B, T] (only when it is reused across
 * batches): cropped where the batch is smaller, zero where it is larger, so the reused
 * direction stays aligned with token positions and never exceeds norm rho.
 */
export function fitTo(eps: tf.Tensor3D, b: number, t: number): tf.Tensor3D {
  const [b0, t0, d] = eps.shape;
  if (b0 === b && t0 === t) return eps.clone();
  return tf.tidy(() => {
    let x = eps.slice([0, 0, 0], [Math.min(b, b0), Math.min(t, t0), d]);
    if (t > t0) x = tf.concat([x, tf.zeros([x.shape[0], t - t0, d])], 1);
    if (b > b0) x = tf.concat([x, tf.zeros([b - b0, t, d])], 0);
    return x as tf.Tensor3D;
  });
}

export class VaccineStep implements StepFunction {
  readonly name = "vaccine";
  private eps: tf.Tensor3D[] | null = null;
  private measuredNorm: number | undefined;

  constructor(
    readonly rhoSetting: Rho,
    readonly refreshEvery = 1,
  ) {
    const value = typeof rhoSetting === "number" ? rhoSetting : rhoSetting.relative;
    if (!(value >= 0) || !Number.isFinite(value)) throw new RangeError(`rho must be a finite number >= 0, got ${value}`);
    if (!Number.isInteger(refreshEvery) || refreshEvery < 1) throw new RangeError(`refreshEvery must be an integer >= 1, got ${refreshEvery}`);
  }

  /** The relative rho resolved (undefined for an absolute rho, or before the first step). */
  get calibration(): RhoCalibration | undefined {
    if (typeof this.rhoSetting === "number" || this.measuredNorm === undefined) return undefined;
    return { rhoRelative: this.rhoSetting.relative, attentionNorm: this.measuredNorm, rho: this.rhoSetting.relative * this.measuredNorm };
  }

  /** The perturbation's norm bound; a relative rho is resolved on the first batch. */
  private rhoFor(input: StepInput): number {
    if (typeof this.rhoSetting === "number") return this.rhoSetting;
    if (this.measuredNorm === undefined) {
      // A state written after step 0 always holds the norm: measuring now would use another batch.
      if (input.step !== 0) throw new Error(`relative rho: no attention-output norm was measured before step ${input.step}`);
      this.measuredNorm = attentionOutputNorm(input.model, input.lora, input.batch, input.shard);
    }
    return this.rhoSetting.relative * this.measuredNorm;
  }

  run(input: StepInput): StepOutput {
    // A shard's eps kept for reuse is gathered into the whole batch's.
    const shard = this.refreshEvery > 1 ? input.shard : undefined;
    const w = input.batch.rows;
    if (this.eps === null || input.step % this.refreshEvery === 0) {
      const rho = this.rhoFor(input);
      const eps = input.phase("perturbation", () => {
        const own = computePerturbation(input, rho);
        if (!shard) return own;
        const whole = gatherRows(own, shard, w!);
        tf.dispose(own);
        return whole;
      });
      this.disposeEps();
      this.eps = eps;
    }
    const [b, t] = input.batch.inputIds.shape;
    const deltas = this.eps.map((e) => (shard ? tf.tidy(() => shardRows(fitTo(e, w!.rows, t), w!)) : fitTo(e, b, t)));
    try {
      const perturbationNorm = batchNorm(input, deltas);
      return input.phase("update", () => {
        const { loss, grads } = lossAndGrads(input, deltas);
        return { loss, gradNorm: input.update(loss, grads), perturbationNorm };
      });
    } finally {
      deltas.forEach((d) => d.dispose());
    }
  }

  /** The perturbation kept for reuse (accelerated Vaccine) and the measured norm, so a resumed run reuses both. */
  exportState(): HostTensors {
    const out: HostTensors = new Map();
    this.eps?.forEach((e, l) => out.set(`${EPS_KEY}${l}`, toHost(e)));
    // Float32 holds the norm exactly: it was computed in float32.
    if (this.measuredNorm !== undefined) out.set(NORM_KEY, { data: Float32Array.of(this.measuredNorm), shape: [1] });
    return out;
  }

  importState(state: HostTensors): void {
    this.disposeEps();
    const norm = state.get(NORM_KEY);
    this.measuredNorm = norm && norm.data[0];
    const layers = [...state.keys()].filter((k) => k.startsWith(EPS_KEY)).length;
    if (layers === 0) return;
    this.eps = Array.from({ length: layers }, (_, l) => {
      const h = state.get(`${EPS_KEY}${l}`);
      if (!h) throw new Error(`training state: ${EPS_KEY}${l} is missing`);
      return tf.tensor3d(h.data, h.shape as [number, number, number]);
    });
  }

  dispose(): void {
    this.disposeEps();
  }

  private disposeEps(): void {
    this.eps?.forEach((e) => e.dispose());
    this.eps = null;
  }
}
