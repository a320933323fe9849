/**
 * Booster (Huang et al. 2024, "Booster: Tackling Harmful Fine-tuning for Large Language
 * Models via Attenuating Harmful Perturbation", arXiv 2409.01586), as
 * docs/defences.md#booster states it. It minimises
 *
 *   f(w) + lambda * (h(w) - h(w - alpha * grad h(w) / ||grad h(w)||))
 *
 * f the loss on the training (alignment) batch, h the loss on a harmful batch: the second
 * term is how much one normalised harmful step would lower h, which the alignment makes
 * small. One step is three forward/backward passes:
 *
 *   "harmful"           h(w), g_h = grad h(w)
 *   "harmful_shifted"   h(w'), g_h' = grad h(w') at w' = w - alpha * g_h / (||g_h|| + 1e-7)
 *   "update"            f(w), g_f = grad f(w); update with g_f + lambda * g_h - lambda * g_h'
 *
 * The gradient drops the second-order term (the shift's dependence on w), as the reference
 * does. The step reports the whole objective as its loss; with lambda = 0 that is f(w) and
 * the update is g_f, exactly the SFT step when LoRA dropout is 0. The only state is the
 * harmful-data cursor (harmful-batches.ts). On a data-parallel shard every term is its rows'
 * part of the whole batch's (summed by the update), but the shift takes the whole g_h.
 */
import * as tf from "@tensorflow/tfjs";
import { globalNorm } from "./adamw.ts";
import type { HostTensors } from "../host-tensor.ts";
import { checkCursor, cursorState, type HarmfulBatches } from "./harmful-batches.ts";
import { disposeBatch } from "./loop.ts";
import { sumOverShards } from "./shard.ts";
import { lossAndGrads, type StepFunction, type StepInput, type StepOutput } from "./step.ts";
import { NORM_EPS } from "./vaccine-step.ts";

export interface BoosterOptions {
  lambda: number;
  alpha: number;
}

export class BoosterStep implements StepFunction {
  readonly name = "booster";

  constructor(
    readonly options: BoosterOptions,
    private readonly harmful: HarmfulBatches,
  ) {
    for (const [name, v] of Object.entries(options)) {
      if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${name} must be a finite number >= 0, got ${v}`);
    }
  }

  run(input: StepInput): StepOutput {
    const { lambda, alpha } = this.options;
    const batch = this.harmful.at(input.step, input.shard);
    const onHarmful = { ...input, batch };
    let atW: ReturnType<typeof lossAndGrads> | undefined;
    let atShifted: ReturnType<typeof lossAndGrads> | undefined;
    try {
      atW = input.phase("harmful", () => lossAndGrads(onHarmful));
      const g = atW.grads;
      let shift = 0;
      atShifted = input.phase("harmful_shifted", () => {
        // A shard's g is its part of the whole batch's, which sets the shift.
        const names = [...g.keys()];
        const whole = input.shard ? sumOverShards(input.shard, names.map((n) => g.get(n)!)).tensors : names.map((n) => g.get(n)!);
        const norm = globalNorm(whole);
        shift = (alpha * norm) / (norm + NORM_EPS);
        const saved = new Map([...input.params].map(([name, p]) => [name, p.clone()]));
        try {
          tf.tidy(() => {
            names.forEach((name, i) => {
              const p = input.params.get(name)!;
              p.assign(p.sub(whole[i].mul(alpha / (norm + NORM_EPS))));
            });
          });
          return lossAndGrads(onHarmful);
        } finally {
          // Back to w exactly: the shift is a probe, not an update.
          for (const [name, p] of input.params) p.assign(saved.get(name)!);
          saved.forEach((t) => t.dispose());
          if (input.shard) tf.dispose(whole);
        }
      });
      const h = atW.loss;
      const hShifted = atShifted.loss;
      const gShifted = atShifted.grads;
      return input.phase("update", () => {
        const { loss, grads } = lossAndGrads(input);
        const combined = new Map<string, tf.Tensor>();
        for (const [name, ga] of grads) {
          combined.set(name, tf.tidy(() => ga.add(g.get(name)!.mul(lambda)).sub(gShifted.get(name)!.mul(lambda))));
          ga.dispose();
        }
        const objective = loss + lambda * (h - hShifted);
        return { loss: objective, gradNorm: input.update(objective, combined), perturbationNorm: shift };
      });
    } finally {
      disposeBatch(batch);
      for (const r of [atW, atShifted]) r?.grads.forEach((t) => t.dispose());
    }
  }

  /** One harmful batch per step: the cursor is the step. */
  exportState(step: number): HostTensors {
    return cursorState(step);
  }

  importState(state: HostTensors, step: number): void {
    checkCursor(state, step);
  }
}
