/**
 * AdamW as PyTorch computes it (decoupled weight decay, bias-corrected moments) and
 * global-norm gradient clipping as torch.nn.utils.clip_grad_norm_. Moments are named
 * after their parameter with the suffixes .exp_avg and .exp_avg_sq, PyTorch's state
 * names, so a training state is readable outside this project.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensors } from "../host-tensor.ts";
import { toHost } from "../model/llama.ts";

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay: number;
  /** Which parameters decay; HF Trainer exempts biases and norm weights. Default: all. */
  decays?: (name: string) => boolean;
}

interface Moments {
  m: tf.Variable;
  v: tf.Variable;
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly decays: (name: string) => boolean;
  private readonly moments = new Map<string, Moments>();
  /** Optimizer steps taken (PyTorch's per-parameter "step"; the same for every parameter here). */
  steps = 0;

  constructor(private readonly params: Map<string, tf.Variable>, options: AdamWOptions) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay;
    this.decays = options.decays ?? (() => true);
    for (const [name, p] of params) {
      // In tidy: the zero tensors the moments start from are freed once copied into variables.
      this.moments.set(name, tf.tidy(() => ({ m: tf.variable(tf.zerosLike(p), false), v: tf.variable(tf.zerosLike(p), false) })));
    }
  }

  /** One update with gradients by parameter name; every parameter must have one. */
  apply(grads: Map<string, tf.Tensor>, lr: number): void {
    this.steps++;
    const bc1 = 1 - Math.pow(this.beta1, this.steps);
    const bc2 = 1 - Math.pow(this.beta2, this.steps);
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) throw new Error(`AdamW: no gradient for ${name}`);
        const { m, v } = this.moments.get(name)!;
        const decayed = this.decays(name) && this.weightDecay > 0 ? p.mul(1 - lr * this.weightDecay) : p;
        m.assign(m.mul(this.beta1).add(g.mul(1 - this.beta1)));
        v.assign(v.mul(this.beta2).add(g.square().mul(1 - this.beta2)));
        const denom = v.sqrt().div(Math.sqrt(bc2)).add(this.eps);
        p.assign(decayed.sub(m.div(denom).mul(lr / bc1)));
      }
    });
  }

  /** Moments as host tensors named "<param>.exp_avg" and "<param>.exp_avg_sq". */
  exportState(): HostTensors {
    const out: HostTensors = new Map();
    for (const [name, { m, v }] of this.moments) {
      out.set(`${name}.exp_avg`, toHost(m));
      out.set(`${name}.exp_avg_sq`, toHost(v));
    }
    return out;
  }

  /** Restores moments saved by exportState; every moment must be present with its shape. */
  importState(state: HostTensors, steps: number): void {
    for (const [name, { m, v }] of this.moments) {
      for (const [suffix, variable] of [["exp_avg", m], ["exp_avg_sq", v]] as const) {
        const t = state.get(`${name}.${suffix}`);
        if (!t || t.shape.join() !== variable.shape.join()) {
          throw new Error(`optimizer state: ${name}.${suffix} is missing or has the wrong shape`);
        }
        tf.tidy(() => variable.assign(tf.tensor(t.data, t.shape)));
      }
    }
    this.steps = steps;
  }

  dispose(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
  }
}

/**
 * Scales gradients in place of the map so their global L2 norm is at most maxNorm
 * (clip coefficient maxNorm / (norm + 1e-6), capped at 1, as PyTorch). Returns the norm
 * before clipping. The caller owns the tensors, old and new.
 */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): number {
  const norm = globalNorm([...grads.values()]);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) {
    for (const [name, g] of grads) {
      grads.set(name, g.mul(coef));
      g.dispose();
    }
  }
  return norm;
}

/** sqrt(sum of squares) over a list of tensors, read back to the host. */
export function globalNorm(tensors: tf.Tensor[]): number {
  return tf.tidy(() => tf.addN(tensors.map((t) => t.square().sum())).sqrt().dataSync()[0]);
}
