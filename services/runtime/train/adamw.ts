/**
 * AdamW as PyTorch computes it (decoupled weight decay, bias-corrected moments) and
 * global-norm gradient clipping as torch.nn.utils.clip_grad_norm_. A parameter's state is
 * named after it with PyTorch's suffixes, .exp_avg, .exp_avg_sq and .step, so a training
 * state is readable outside this project.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensors } from "../host-tensor.ts";
import { toHost } from "../model/llama.ts";
import { nativeAdamWUpdate, nativeSumOfSquares } from "../native/adamw-kernel.ts";

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
  /** Updates this parameter has had: its bias correction's step, as PyTorch's state["step"]. */
  steps: number;
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly decays: (name: string) => boolean;
  private readonly moments = new Map<string, Moments>();

  constructor(private readonly params: Map<string, tf.Variable>, options: AdamWOptions) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay;
    this.decays = options.decays ?? (() => true);
    for (const [name, p] of params) {
      // In tidy: the zero tensors the moments start from are freed once copied into variables.
      this.moments.set(name, tf.tidy(() => ({ m: tf.variable(tf.zerosLike(p), false), v: tf.variable(tf.zerosLike(p), false), steps: 0 })));
    }
  }

  /**
   * One update with gradients by parameter name, each multiplied by gradScale first (the
   * clipping coefficient from clipCoefficient; 1 leaves them as they are). A parameter without
   * one is frozen for this step (T-Vaccine trains only some layers): weight, decay, moments and
   * step count untouched, as PyTorch skips a parameter whose grad is None, so a layer first drawn
   * at step 21 is bias-corrected as at its first update. A gradient for an unknown name
   * is a bug. With the native kernels active each parameter is one fused call, bit for bit
   * the tfjs ops below (native/adamw-kernel.ts); otherwise, or for a parameter it cannot take,
   * those ops run.
   */
  apply(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
    for (const name of grads.keys()) if (!this.params.has(name)) throw new Error(`AdamW: ${name} is not a parameter`);
    const decayFactor = 1 - lr * this.weightDecay;
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) continue;
        const moments = this.moments.get(name)!;
        const { m, v } = moments;
        const steps = ++moments.steps;
        const bc1 = 1 - Math.pow(this.beta1, steps);
        const bc2 = 1 - Math.pow(this.beta2, steps);
        const decays = this.decays(name) && this.weightDecay > 0;
        const constants = { gradScale, decay: decays ? decayFactor : 1, beta1: this.beta1, beta2: this.beta2, eps: this.eps, sqrtBc2: Math.sqrt(bc2), stepSize: lr / bc1 };
        if (nativeAdamWUpdate(p, g, m, v, constants)) continue;
        const scaled = gradScale === 1 ? g : g.mul(gradScale);
        const decayed = decays ? p.mul(decayFactor) : p;
        m.assign(m.mul(this.beta1).add(scaled.mul(1 - this.beta1)));
        v.assign(v.mul(this.beta2).add(scaled.square().mul(1 - this.beta2)));
        const denom = v.sqrt().div(constants.sqrtBc2).add(this.eps);
        p.assign(decayed.sub(m.div(denom).mul(constants.stepSize)));
      }
    });
  }

  /** Moments and step counts as host tensors named "<param>.exp_avg", ".exp_avg_sq" and ".step" (a float32 scalar, as PyTorch's). */
  exportState(): HostTensors {
    const out: HostTensors = new Map();
    for (const [name, { m, v, steps }] of this.moments) {
      out.set(`${name}.exp_avg`, toHost(m));
      out.set(`${name}.exp_avg_sq`, toHost(v));
      out.set(`${name}.step`, { data: Float32Array.of(steps), shape: [] });
    }
    return out;
  }

  /**
   * Restores what exportState saved; every moment must be present with its shape. A state
   * without step counts (written before they were kept) gives every parameter `steps`, the
   * training step, which is what they all had then.
   */
  importState(state: HostTensors, steps: number): void {
    for (const [name, moments] of this.moments) {
      for (const [suffix, variable] of [["exp_avg", moments.m], ["exp_avg_sq", moments.v]] as const) {
        const t = state.get(`${name}.${suffix}`);
        if (!t || t.shape.join() !== variable.shape.join()) {
          throw new Error(`optimizer state: ${name}.${suffix} is missing or has the wrong shape`);
        }
        tf.tidy(() => variable.assign(tf.tensor(t.data, t.shape)));
      }
      const count = state.get(`${name}.step`)?.data[0] ?? steps;
      if (!Number.isInteger(count) || count < 0 || count > steps) throw new Error(`optimizer state: ${name}.step is ${count}, not an integer from 0 to the training step ${steps}`);
      moments.steps = count;
    }
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
 * Global-norm clipping as torch.nn.utils.clip_grad_norm_: the gradients' global L2 norm
 * and the coefficient to multiply them by, maxNorm / (norm + 1e-6) capped at 1. AdamW.apply
 * takes the coefficient, so clipping costs no pass of its own over the gradients.
 */
export function clipCoefficient(grads: Map<string, tf.Tensor>, maxNorm: number): { norm: number; scale: number } {
  const norm = globalNorm([...grads.values()]);
  return { norm, scale: Math.min(1, maxNorm / (norm + 1e-6)) };
}

/**
 * Scales gradients in place of the map so their global L2 norm is at most maxNorm (see
 * clipCoefficient). Returns the norm before clipping. The caller owns the tensors, old and new.
 */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): number {
  const { norm, scale } = clipCoefficient(grads, maxNorm);
  if (scale < 1) {
    for (const [name, g] of grads) {
      grads.set(name, g.mul(scale));
      g.dispose();
    }
  }
  return norm;
}

/** sqrt(sum of squares) over a list of tensors. */
export function globalNorm(tensors: tf.Tensor[]): number {
  return Math.sqrt(sumOfSquares(tensors));
}

/** The sum of the squares of the tensors' values, read back to the host: the addon's (in double) when it can, else tfjs's (float32). */
export function sumOfSquares(tensors: tf.Tensor[]): number {
  return nativeSumOfSquares(tensors) ?? tf.tidy(() => tf.addN(tensors.map((t) => t.square().sum())).dataSync()[0]);
}
