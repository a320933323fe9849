/**
 * Lisa, a fine-tuning guard (Huang et al. 2024, "Lazy Safety Alignment";
 * docs/defences.md#lisa): the run's steps go in cycles of K1 steps on alignment data then
 * K2 steps on the user's data, and every step's loss gains the proximal term
 *
 *   rho/2 * ||w - w_switch||^2      w: the trainable parameters, w_switch: w at the last switch
 *
 * which keeps each state close to where the other one left the weights. The state is a pure
 * function of the step (like the data order, batches.ts), so a resume needs only the step
 * and w_switch; the position is still written to the training state, and checked on resume.
 * K1 = 0 never switches: no proximal term, exactly the wrapped step on the user's data.
 */
import * as tf from "@tensorflow/tfjs";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import { toHost } from "../model/llama.ts";
import { isLead } from "./shard.ts";
import type { BatchSource, StepFunction, StepInput, StepOutput } from "./step.ts";

export interface LisaOptions {
  /** K1: steps per cycle on the alignment data, >= 0. */
  alignmentSteps: number;
  /** K2: steps per cycle on the user's data, >= 1. */
  userSteps: number;
  /** Proximal strength, >= 0. */
  rho: number;
}

export type LisaState = "alignment" | "user";

/** The two data sets the steps alternate between (batchSource). */
export interface LisaData {
  alignment: ReadonlyArray<Example>;
  user: ReadonlyArray<Example | string>;
}

/** Where step `step` (0-based) falls: its state, steps already taken in that state, and each data's batches taken before it. */
export interface LisaPosition {
  state: LisaState;
  stepsIntoState: number;
  alignmentBatches: number;
  userBatches: number;
}

export function lisaPositionAt(step: number, { alignmentSteps: k1, userSteps: k2 }: LisaOptions): LisaPosition {
  const cycles = Math.floor(step / (k1 + k2));
  const pos = step % (k1 + k2);
  const inAlignment = pos < k1;
  return {
    state: inAlignment ? "alignment" : "user",
    stepsIntoState: inAlignment ? pos : pos - k1,
    alignmentBatches: cycles * k1 + Math.min(pos, k1),
    userBatches: cycles * k2 + Math.max(0, pos - k1),
  };
}

/** rho/2 * sum ||w - anchor||^2 over the parameters, and its gradient with respect to each (autodiff of the formula). */
export function proximalTerm(params: Map<string, tf.Variable>, anchor: Map<string, tf.Tensor>, rho: number): { value: number; grads: Map<string, tf.Tensor> } {
  const names = [...params.keys()];
  const vars = names.map((n) => params.get(n)!);
  const { value, grads } = tf.tidy(() =>
    tf.variableGrads(() => {
      const sq = names.map((n) => params.get(n)!.sub(anchor.get(n)!).square().sum());
      return tf.addN(sq).mul(rho / 2) as tf.Scalar;
    }, vars),
  );
  const byName = new Map<string, tf.Tensor>();
  names.forEach((n, i) => byName.set(n, grads[vars[i].name]));
  const v = value.dataSync()[0];
  value.dispose();
  return { value: v, grads: byName };
}

const POSITION_KEY = "lisa.position";
const ANCHOR_PREFIX = "lisa.anchor.";

export class LisaStep implements StepFunction {
  readonly name: string;
  private anchor: Map<string, tf.Tensor> | null = null;

  constructor(
    private readonly inner: StepFunction,
    readonly options: LisaOptions,
    /** Absent on a data-parallel thread, which is given its batches (data-parallel.ts). */
    private readonly data?: LisaData,
  ) {
    const { alignmentSteps, userSteps, rho } = options;
    if (!Number.isInteger(alignmentSteps) || alignmentSteps < 0) throw new RangeError(`alignmentSteps must be an integer >= 0, got ${alignmentSteps}`);
    if (!Number.isInteger(userSteps) || userSteps < 1) throw new RangeError(`userSteps must be an integer >= 1, got ${userSteps}`);
    if (!(rho >= 0) || !Number.isFinite(rho)) throw new RangeError(`rho must be a finite number >= 0, got ${rho}`);
    if (alignmentSteps > 0 && data?.alignment.length === 0) throw new RangeError("Lisa's alignment data is empty");
    this.name = `lisa+${inner.name}`;
  }

  batchSource(step: number): BatchSource {
    const p = lisaPositionAt(step, this.options);
    const user = p.state === "user";
    if (!this.data) throw new Error("Lisa: this step function was made without its data sets");
    return { data: user ? this.data.user : this.data.alignment, position: user ? p.userBatches : p.alignmentBatches, userBatches: p.userBatches + (user ? 1 : 0) };
  }

  run(input: StepInput): StepOutput {
    const { state, stepsIntoState } = lisaPositionAt(input.step, this.options);
    if (this.options.alignmentSteps > 0 && (stepsIntoState === 0 || this.anchor === null)) {
      if (stepsIntoState !== 0) throw new Error(`Lisa: resumed at step ${input.step} inside a state without the weights at its switch`);
      this.setAnchor(new Map([...input.params].map(([n, v]) => [n, v.clone()])));
    }
    const anchor = this.anchor;
    if (!anchor) return { ...this.inner.run(input), lisa: { state, proximal: 0 } };
    let proximal = 0;
    const update = (loss: number, grads: Map<string, tf.Tensor>): number => {
      const prox = proximalTerm(input.params, anchor, this.options.rho);
      proximal = prox.value;
      // Not a sum over the batch's rows: a data-parallel run counts it on one shard.
      const counted = !input.shard || isLead(input.shard);
      const total = new Map<string, tf.Tensor>();
      for (const [n, g] of grads) {
        total.set(n, counted ? g.add(prox.grads.get(n)!) : g);
        if (counted) g.dispose();
      }
      // Including those of parameters the step froze.
      tf.dispose([...prox.grads.values()]);
      return input.update(counted ? loss + proximal : loss, total);
    };
    const out = this.inner.run({ ...input, update });
    return { ...out, lisa: { state, proximal } };
  }

  exportState(step: number): HostTensors {
    const out = this.inner.exportState?.(step) ?? new Map();
    const p = lisaPositionAt(step, this.options);
    out.set(POSITION_KEY, { shape: [4], data: Float32Array.from([p.state === "alignment" ? 0 : 1, p.stepsIntoState, p.alignmentBatches, p.userBatches]) });
    for (const [n, t] of this.anchor ?? []) out.set(ANCHOR_PREFIX + n, toHost(t));
    return out;
  }

  /** Restores w_switch; the saved position must be the one the step implies. */
  importState(state: HostTensors, step: number): void {
    this.inner.importState?.(state, step);
    const saved = state.get(POSITION_KEY);
    const p = lisaPositionAt(step, this.options);
    const expected = [p.state === "alignment" ? 0 : 1, p.stepsIntoState, p.alignmentBatches, p.userBatches];
    if (!saved || expected.some((x, i) => saved.data[i] !== x)) {
      throw new Error(`training state: Lisa position ${saved ? `[${[...saved.data]}]` : "missing"}, expected [${expected}] at step ${step}`);
    }
    const anchor = new Map<string, tf.Tensor>();
    for (const [k, h] of state) if (k.startsWith(ANCHOR_PREFIX)) anchor.set(k.slice(ANCHOR_PREFIX.length), tf.tensor(h.data, h.shape));
    this.setAnchor(anchor.size ? anchor : null);
  }

  dispose(): void {
    this.setAnchor(null);
    this.inner.dispose?.();
  }

  private setAnchor(anchor: Map<string, tf.Tensor> | null): void {
    for (const t of this.anchor?.values() ?? []) t.dispose();
    this.anchor = anchor;
  }
}
