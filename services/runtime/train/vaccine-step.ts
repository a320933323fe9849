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
 * reused in between.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensors } from "../host-tensor.ts";
import { toHost } from "../model/llama.ts";
import { causalLmLoss } from "../model/loss.ts";
import { globalNorm } from "./adamw.ts";
import { lossAndGrads, type StepFunction, type StepInput, type StepOutput } from "./step.ts";

/** The reference's guard against a zero gradient norm. */
export const NORM_EPS = 1e-7;

/** Pass 1: the worst-case perturbation of every layer's attention output within norm rho. */
export function computePerturbation(input: StepInput, rho: number): tf.Tensor3D[] {
  const { model, lora, batch } = input;
  const [b, t] = batch.inputIds.shape;
  const layers = model.config.numHiddenLayers;
  return tf.tidy(() => {
    const zeros = Array.from({ length: layers }, () => tf.zeros([b, t, model.config.hiddenSize]));
    const lossOf = (...deltas: tf.Tensor[]) =>
      causalLmLoss(model.forward(batch.inputIds, batch.attentionMask, { lora, deltas, training: true }).logits, batch.labels);
    const g = tf.grads(lossOf)(zeros);
    const norm = tf.addN(g.map((x) => x.square().sum())).sqrt();
    const scale = tf.scalar(rho).div(norm.add(NORM_EPS));
    return g.map((x) => x.mul(scale) as tf.Tensor3D);
  });
}

/**
 * A stored perturbation fitted to another batch's [B, T] (only when it is reused across
 * batches): cropped where the batch is smaller, zero where it is larger, so the reused
 * direction stays aligned with token positions and never exceeds norm rho.
 */
function fitTo(eps: tf.Tensor3D, b: number, t: number): tf.Tensor3D {
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

  constructor(
    readonly rho: number,
    readonly refreshEvery = 1,
  ) {
    if (!(rho >= 0) || !Number.isFinite(rho)) throw new RangeError(`rho must be a finite number >= 0, got ${rho}`);
    if (!Number.isInteger(refreshEvery) || refreshEvery < 1) throw new RangeError(`refreshEvery must be an integer >= 1, got ${refreshEvery}`);
  }

  run(input: StepInput): StepOutput {
    if (this.eps === null || input.step % this.refreshEvery === 0) {
      const eps = input.phase("perturbation", () => computePerturbation(input, this.rho));
      this.disposeEps();
      this.eps = eps;
    }
    const [b, t] = input.batch.inputIds.shape;
    const deltas = this.eps.map((e) => fitTo(e, b, t));
    try {
      const perturbationNorm = globalNorm(deltas);
      return input.phase("update", () => {
        const { loss, grads } = lossAndGrads(input, deltas);
        return { loss, gradNorm: input.update(loss, grads), perturbationNorm };
      });
    } finally {
      deltas.forEach((d) => d.dispose());
    }
  }

  /** The perturbation kept for reuse (accelerated Vaccine), so a resumed run reuses it too. */
  exportState(): HostTensors {
    const out: HostTensors = new Map();
    this.eps?.forEach((e, l) => out.set(`vaccine.eps.${l}`, toHost(e)));
    return out;
  }

  importState(state: HostTensors): void {
    this.disposeEps();
    const layers = [...state.keys()].filter((k) => k.startsWith("vaccine.eps.")).length;
    if (layers === 0) return;
    this.eps = Array.from({ length: layers }, (_, l) => {
      const h = state.get(`vaccine.eps.${l}`);
      if (!h) throw new Error(`training state: vaccine.eps.${l} is missing`);
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
