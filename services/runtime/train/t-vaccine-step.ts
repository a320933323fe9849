/**
 * T-Vaccine, layer-wise Vaccine (Liu et al. 2024, "Targeted Vaccine: Safety Alignment for
 * Large Language Models against Harmful Fine-Tuning via Layer-wise Perturbation",
 * arXiv 2410.09760), as docs/defences.md#t-vaccine states it:
 *
 *   probe  (steps 0, K, 2K, ...)  g_l = d h / d delta_l on a harmful batch (h its loss),
 *                                 p_l = ||g_l|| / sum_k ||g_k||
 *   draw   (steps 0, J, 2J, ...)  S = `layers` distinct layers, drawn with probabilities p
 *   pass 1                        g_l = d loss / d delta_l on the training batch, l in S;
 *                                 eps_l = rho * g_l / (sqrt(sum_{k in S} ||g_k||^2) + 1e-7)
 *   pass 2                        grads of loss(delta = eps, 0 elsewhere) with respect to the
 *                                 LoRA weights of the layers in S only; the others are frozen
 *
 * With every layer drawn this is the Vaccine step, value for value (the probe runs without
 * dropout, so it takes nothing from the step's random stream). On a data-parallel shard the
 * probe's and the perturbation's norms are the whole batch's, as Vaccine's.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensors } from "../host-tensor.ts";
import { Rng } from "../rng.ts";
import { checkCursor, cursorState, type HarmfulBatches } from "./harmful-batches.ts";
import { disposeBatch } from "./loop.ts";
import { lossAndGrads, type StepFunction, type StepInput, type StepOutput } from "./step.ts";
import { attentionOutputGrads, batchNorm, computePerturbation } from "./vaccine-step.ts";

export interface TVaccineOptions {
  rho: number;
  /** S: layers drawn per period (capped at the model's depth). */
  layers: number;
  /** J: steps between draws. */
  resampleEvery: number;
  /** K: steps between probes. */
  probeEvery: number;
  /** The run's seed: the draws are a function of (seed, step). */
  seed: number;
}

const LAYER_OF = /^model\.layers\.(\d+)\./;

/**
 * `count` distinct layers drawn one after another, each with probability proportional to
 * the weights of those not drawn yet (uniformly once they are all zero), in ascending order.
 */
export function drawLayers(p: readonly number[], count: number, rng: Rng): number[] {
  const left = p.map((w, layer) => ({ w, layer }));
  const out: number[] = [];
  while (out.length < count && left.length > 0) {
    const total = left.reduce((s, x) => s + x.w, 0);
    let i = -1;
    if (total > 0) {
      let u = rng.next() * total;
      i = left.findIndex((x) => (u -= x.w) < 0);
      // Rounding can leave u just above zero after the last weight: take the last non-zero one.
      if (i < 0) i = left.map((x) => x.w > 0).lastIndexOf(true);
    } else {
      i = rng.int(left.length);
    }
    out.push(left[i].layer);
    left.splice(i, 1);
  }
  return out.sort((a, b) => a - b);
}

/** p_l = ||g_l|| / sum_k ||g_k|| (uniform when every norm is 0), rounded to float32 as the training state stores it. */
export function layerProbabilities(norms: readonly number[]): number[] {
  const total = norms.reduce((s, x) => s + x, 0);
  const p = total > 0 && Number.isFinite(total) ? norms.map((x) => x / total) : norms.map(() => 1 / norms.length);
  return Array.from(Float32Array.from(p));
}

export class TVaccineStep implements StepFunction {
  readonly name = "t_vaccine";
  private probabilities: number[] | null = null;
  private drawn: number[] | null = null;

  constructor(
    readonly options: TVaccineOptions,
    private readonly harmful: HarmfulBatches,
  ) {
    const { rho, layers, resampleEvery, probeEvery } = options;
    if (!(rho >= 0) || !Number.isFinite(rho)) throw new RangeError(`rho must be a finite number >= 0, got ${rho}`);
    for (const [name, v] of Object.entries({ layers, resampleEvery, probeEvery })) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be an integer >= 1, got ${v}`);
    }
  }

  /** Probabilities of the last probe and the layers drawn last (null before step 0). */
  get state(): { probabilities: number[] | null; layers: number[] | null } {
    return { probabilities: this.probabilities, layers: this.drawn };
  }

  run(input: StepInput): StepOutput {
    const { model, batch, step } = input;
    const { rho, probeEvery, resampleEvery } = this.options;
    const depth = model.config.numHiddenLayers;
    if (this.probabilities === null || step % probeEvery === 0) {
      this.probabilities = input.phase("probe", () => this.probe(input, Math.floor(step / probeEvery)));
    }
    if (this.drawn === null || step % resampleEvery === 0) {
      this.drawn = drawLayers(this.probabilities, Math.min(this.options.layers, depth), Rng.derive(this.options.seed, `t-vaccine.layers.${step}`));
    }
    const drawn = this.drawn;
    const eps = input.phase("perturbation", () => computePerturbation(input, rho, drawn));
    const [b, t] = batch.inputIds.shape;
    const zeros = tf.zeros([b, t, model.config.hiddenSize]);
    const deltas = Array.from({ length: depth }, (_, l) => (drawn.includes(l) ? eps[drawn.indexOf(l)] : zeros));
    // Weights outside any layer (only when no adapter is trained) are not layer-bound: they always train.
    const trained = new Map(
      [...input.params].filter(([name]) => {
        const m = LAYER_OF.exec(name);
        return !m || drawn.includes(Number(m[1]));
      }),
    );
    try {
      const perturbationNorm = batchNorm(input, eps);
      return input.phase("update", () => {
        const { loss, grads } = lossAndGrads({ ...input, params: trained }, deltas);
        return { loss, gradNorm: input.update(loss, grads), perturbationNorm };
      });
    } finally {
      eps.forEach((e) => e.dispose());
      zeros.dispose();
    }
  }

  /** Per-layer norms of the loss gradient at the attention outputs on harmful batch `index`, as probabilities. */
  private probe(input: StepInput, index: number): number[] {
    const harmful = this.harmful.at(index, input.shard);
    try {
      const all = Array.from({ length: input.model.config.numHiddenLayers }, (_, l) => l);
      // No dropout: the probe measures the model, and leaves the step's random stream to the passes that train.
      const own = tf.tidy(() => {
        const g = attentionOutputGrads(input.model, input.lora, harmful, all, false);
        return tf.stack(g.map((x) => x.square().sum())).dataSync();
      });
      // Float32 sums of squares (the whole batch's for a shard), their square roots rounded as tfjs's sqrt.
      const squares = input.shard ? input.shard.sum(own) : own;
      return layerProbabilities(Array.from(squares, (x) => Math.fround(Math.sqrt(x))));
    } finally {
      disposeBatch(harmful);
    }
  }

  /** Probes taken before step `step`: one at each multiple of K. */
  private probesBefore(step: number): number {
    return Math.ceil(step / this.options.probeEvery);
  }

  /** The probabilities, the drawn layers and the probe cursor, so a resumed run trains the layers an uninterrupted one would. */
  exportState(step: number): HostTensors {
    const out = cursorState(this.probesBefore(step));
    if (this.probabilities) out.set("t_vaccine.probabilities", { shape: [this.probabilities.length], data: Float32Array.from(this.probabilities) });
    if (this.drawn) out.set("t_vaccine.layers", { shape: [this.drawn.length], data: Float32Array.from(this.drawn) });
    return out;
  }

  importState(state: HostTensors, step: number): void {
    checkCursor(state, this.probesBefore(step));
    const p = state.get("t_vaccine.probabilities");
    const layers = state.get("t_vaccine.layers");
    if (!p !== !layers) throw new Error("training state: t_vaccine.probabilities and t_vaccine.layers must both be present or both absent");
    this.probabilities = p ? Array.from(p.data) : null;
    this.drawn = layers ? Array.from(layers.data) : null;
  }
}
