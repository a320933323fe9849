/**
 * LoRA adapters with PEFT semantics: for each targeted projection W [out, in],
 * y = x W^T + dropout(x) A^T B^T * (alpha / r), A [r, in] Kaiming-uniform, B [out, r] zero,
 * so a fresh adapter changes nothing. Weights are named as PEFT names them inside the
 * model ("<module>.lora_A.weight"); the on-disk format (checkpoint/peft-folder.ts) maps
 * these names and LoraConfig to PEFT's files, so this layer knows no file format.
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointFormatError } from "../format-error.ts";
import type { HostTensor, HostTensors } from "../host-tensor.ts";
import { nativeDropoutMask } from "../native/dropout-kernel.ts";
import { nativeKernelsActive } from "../native/kernels.ts";
import { loraLinearKernel } from "../native/lora-linear-kernel.ts";
import { Rng } from "../rng.ts";
import type { LlamaConfig } from "./config.ts";
import { LINEAR_MODULES, LlamaModel, linearName, linearShape, linearT, toHost, type LinearModule } from "./llama.ts";

export interface LoraConfig {
  r: number;
  alpha: number;
  /** Dropout on the adapter's input, active only when training; 0 makes steps deterministic. */
  dropout: number;
  targetModules: LinearModule[];
}

export function validateLoraConfig(c: LoraConfig): void {
  if (!Number.isInteger(c.r) || c.r <= 0) throw new Error(`LoRA config: r must be a positive integer, got ${c.r}`);
  if (!Number.isFinite(c.alpha) || c.alpha <= 0) throw new Error(`LoRA config: alpha must be positive, got ${c.alpha}`);
  if (!(c.dropout >= 0 && c.dropout < 1)) throw new Error(`LoRA config: dropout must be in [0, 1), got ${c.dropout}`);
  if (c.targetModules.length === 0) throw new Error("LoRA config: targetModules is empty");
  for (const m of c.targetModules) {
    if (!(LINEAR_MODULES as readonly string[]).includes(m)) {
      throw new Error(`LoRA config: unknown target module ${JSON.stringify(m)}; valid: ${LINEAR_MODULES.join(", ")}`);
    }
  }
  if (new Set(c.targetModules).size !== c.targetModules.length) throw new Error("LoRA config: targetModules has duplicates");
}

/** The name of a projection's A or B matrix, e.g. "model.layers.0.self_attn.q_proj.lora_A.weight". */
export function loraWeightName(module: string, matrix: "A" | "B"): string {
  return `${module}.lora_${matrix}.weight`;
}

const LORA_WEIGHT_NAME = /^(.+)\.lora_([AB])\.weight$/;

/** The module and matrix of a loraWeightName, or null for any other name. */
export function parseLoraWeightName(name: string): { module: string; matrix: "A" | "B" } | null {
  const match = LORA_WEIGHT_NAME.exec(name);
  return match ? { module: match[1], matrix: match[2] as "A" | "B" } : null;
}

/** The A and B matrices of one adapted projection. */
export interface LoraPair {
  a: tf.Variable; // [r, in]
  b: tf.Variable; // [out, r]
}

export class LoraAdapter {
  readonly modelConfig: LlamaConfig;
  readonly config: LoraConfig;
  readonly scaling: number;
  /** By projection name prefix, e.g. "model.layers.0.self_attn.q_proj". */
  readonly pairs: Map<string, LoraPair>;
  private dropoutRng: Rng;
  /**
   * Set when this adapter computes rows [from, to) of a batch of `rows` rows (one thread of
   * data-parallel training): each mask is the one the whole batch would draw, cut to these
   * rows, so the threads together apply one thread's masks.
   */
  dropoutWindow?: { from: number; to: number; rows: number };

  private constructor(modelConfig: LlamaConfig, config: LoraConfig, pairs: Map<string, LoraPair>, seed: number) {
    this.modelConfig = modelConfig;
    this.config = config;
    this.scaling = config.alpha / config.r;
    this.pairs = pairs;
    this.dropoutRng = new Rng(seed ^ 0x5bd1e995);
  }

  /**
   * Seeded PEFT init: A ~ U(-bound, bound) as torch's kaiming_uniform_(a=sqrt(5)), i.e.
   * gain = sqrt(2 / (1 + a^2)), bound = gain * sqrt(3 / fan_in) with fan_in = in; B = 0.
   * The seed also drives the dropout masks, so a training run is reproducible.
   */
  static init(modelConfig: LlamaConfig, config: LoraConfig, seed: number): LoraAdapter {
    validateLoraConfig(config);
    const rng = new Rng(seed);
    const gain = Math.sqrt(2 / (1 + 5));
    const tensors: HostTensors = new Map();
    for (const { name, out, inDim } of targets(modelConfig, config)) {
      const bound = gain * Math.sqrt(3 / inDim);
      tensors.set(loraWeightName(name, "A"), { shape: [config.r, inDim], data: rng.uniformArray(config.r * inDim, -bound, bound) });
      tensors.set(loraWeightName(name, "B"), { shape: [out, config.r], data: new Float32Array(out * config.r) });
    }
    return LoraAdapter.fromWeights(modelConfig, config, tensors, seed);
  }

  /** Builds an adapter from tensors named by loraWeightName; every expected tensor must be present, nothing else. */
  static fromWeights(modelConfig: LlamaConfig, config: LoraConfig, tensors: HostTensors, seed = 0): LoraAdapter {
    validateLoraConfig(config);
    const expected = loraWeightShapes(modelConfig, config);
    const problems: string[] = [];
    for (const [name, shape] of expected) {
      const t = tensors.get(name);
      if (!t) problems.push(`missing ${name}`);
      else if (t.shape.length !== shape.length || t.shape.some((x, i) => x !== shape[i]) || t.data.length !== shape[0] * shape[1]) {
        problems.push(`${name} has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`);
      }
    }
    for (const name of tensors.keys()) if (!expected.has(name)) problems.push(`unexpected ${name}`);
    if (problems.length > 0) throw new CheckpointFormatError(`LoRA tensors do not match the configs: ${problems.join("; ")}`);
    const pairs = new Map<string, LoraPair>();
    for (const { name } of targets(modelConfig, config)) {
      const host = (part: "A" | "B") => {
        const t = tensors.get(loraWeightName(name, part))!;
        return tf.tidy(() => tf.variable(tf.tensor(t.data, t.shape, "float32"), true));
      };
      pairs.set(name, { a: host("A"), b: host("B") });
    }
    return new LoraAdapter(modelConfig, config, pairs, seed);
  }

  /**
   * Restarts the dropout stream from a seed. The training loop reseeds at every step from
   * (run seed, step), so a resumed run draws the same masks as an uninterrupted one.
   */
  reseedDropout(seed: number): void {
    this.dropoutRng = new Rng(seed);
  }

  /** The trainable adapter weights (A and B of every targeted projection). */
  get variables(): tf.Variable[] {
    return [...this.pairs.values()].flatMap((p) => [p.a, p.b]);
  }

  /** The mask of an input of `shape`: its own, or its rows' part of the whole batch's (dropoutWindow); drawn by the addon when it is active. */
  private dropoutMaskFor(shape: number[], rate: number): tf.Tensor {
    const size = tf.util.sizeFromShape(shape);
    const w = this.dropoutWindow;
    // The input holds the shard's rows x T x in values; the whole batch's mask, `rows` rows of them.
    const skip = !w || w.to === w.from ? 0 : w.from * (size / (w.to - w.from));
    const seeds = maskSeeds(this.dropoutRng);
    return nativeKernelsActive() ? nativeDropoutMask(shape, rate, seeds, skip) : tf.tensor(dropoutMask(seeds, size, rate, skip), shape);
  }

  /**
   * Projection `name` with its adapter on x [..., in]: x W^T plus the adapter's branch when
   * the projection is targeted (one fused kernel when the native ones are active), [..., out].
   * Dropout draws a fresh mask per call (seeded from the adapter's stream).
   */
  linear<T extends tf.Tensor>(name: string, x: T, w: tf.Tensor2D, training: boolean): T {
    return tf.tidy(() => {
      const branch = this.branch(name, x.shape, training);
      if (branch && nativeKernelsActive()) return loraLinearKernel(x, w, branch.a, branch.b, this.scaling, branch.mask);
      const rows = x.reshape([-1, x.shape[x.rank - 1]]) as tf.Tensor2D;
      let y = linearT(rows, w);
      // The scaling on x A ([N, r]) rather than on the output ([N, out]): the same product
      // up to rounding, and a multiply (and its gradient) over r columns instead of out.
      if (branch) y = y.add(linearT(linearT(branch.mask ? rows.mul(branch.mask.reshape(rows.shape)) : rows, branch.a).mul(this.scaling), branch.b));
      return y.reshape([...x.shape.slice(0, -1), w.shape[0]]) as T;
    });
  }

  /**
   * Projection `name`'s adapter for an input of `shape`: A, B and, when training with dropout,
   * a fresh mask of that shape (drawn from the adapter's stream, as linear draws it); undefined
   * when the projection is not targeted. The mask is the caller's to dispose.
   */
  branch(name: string, shape: number[], training: boolean): { a: tf.Tensor2D; b: tf.Tensor2D; mask: tf.Tensor | null } | undefined {
    const pair = this.pairs.get(name);
    if (!pair) return undefined;
    const rate = this.config.dropout;
    const mask = training && rate > 0 ? this.dropoutMaskFor(shape, rate) : null;
    return { a: pair.a as tf.Tensor2D, b: pair.b as tf.Tensor2D, mask };
  }

  /** A host copy of every adapter weight, named by loraWeightName. */
  exportWeights(): HostTensors {
    const out: HostTensors = new Map();
    for (const [name, p] of this.pairs) {
      out.set(loraWeightName(name, "A"), toHost(p.a));
      out.set(loraWeightName(name, "B"), toHost(p.b));
    }
    return out;
  }

  dispose(): void {
    for (const v of this.variables) v.dispose();
    this.pairs.clear();
  }
}

/** The mask's generators (native/blas/dropout.c steps them together, as one vector). */
export const MASK_LANES = 8;

/**
 * Inverted dropout's mask: each element kept with probability 1 - rate and scaled by
 * 1 / (1 - rate), else 0, as torch's and tf.dropout's. Drawn by eight xorshift128 generators
 * from maskSeeds: element i is generator i % 8's draw number floor(i / 8), kept when
 * the draw is at least rate * 2^32. tf.dropout's own generator (seedrandom, in JavaScript
 * doubles) took 1.7-3 ms per [512, 256] input, and a 6 x 256 model draws 42 such masks per
 * pass; with the native kernels the addon draws the same values (native/dropout-kernel.ts).
 * Values [skip, skip + n) of the stream: a shard's part of a whole batch's mask.
 */
export function dropoutMask(seeds: Uint32Array, n: number, rate: number, skip = 0): Float32Array {
  const mask = new Float32Array(n);
  const scale = 1 / (1 - rate);
  const threshold = rate * 4294967296;
  const L = MASK_LANES;
  // One generator at a time, in locals (a vector's worth of generators in JavaScript arrays ran 3x slower).
  for (let l = 0; l < L; l++) {
    let s0 = seeds[l];
    let s1 = seeds[L + l];
    let s2 = seeds[2 * L + l];
    let s3 = seeds[3 * L + l];
    for (let i = l; i < skip + n; i += L) {
      let t = s3;
      const x = s0;
      s3 = s2;
      s2 = s1;
      s1 = x;
      t ^= t << 11;
      t ^= t >>> 8;
      s0 = t ^ x ^ (x >>> 19);
      if (i >= skip && s0 >>> 0 >= threshold) mask[i - skip] = scale;
    }
  }
  return mask;
}

/** A mask's generator states, drawn from the adapter's stream; each s0 odd, since a state of all zeros would stay zero. */
export function maskSeeds(rng: Rng): Uint32Array {
  const seeds = Uint32Array.from({ length: 4 * MASK_LANES }, () => rng.nextUint32());
  for (let l = 0; l < MASK_LANES; l++) seeds[l] |= 1;
  return seeds;
}

/** A new model (a full checkpoint) with W' = W + scaling * B A for every adapted projection. */
export function mergeLora(model: LlamaModel, adapter: LoraAdapter): LlamaModel {
  const weights = model.exportWeights();
  for (const [name, p] of adapter.pairs) {
    const w = weights.get(`${name}.weight`);
    if (!w) throw new Error(`mergeLora: the model has no ${name}.weight`);
    weights.set(`${name}.weight`, mergeLoraWeight(w, toHost(p.a), toHost(p.b), adapter.scaling));
  }
  return LlamaModel.fromWeights(model.config, weights);
}

/**
 * One projection merged, W + (B A) * scaling, in float32 in that order (B A, then the
 * scaling, then the sum), as PEFT's merge_and_unload computes it: what mergeLora does to
 * each adapted weight, and what an exported merged checkpoint holds.
 */
export function mergeLoraWeight(w: HostTensor, a: HostTensor, b: HostTensor, scaling: number): HostTensor {
  const merged = tf.tidy(() =>
    tf.tensor(w.data, w.shape).add(tf.matMul(tf.tensor(b.data, b.shape), tf.tensor(a.data, a.shape)).mul(scaling)),
  );
  const host = toHost(merged);
  merged.dispose();
  return host;
}

/** Every adapter weight a LoRA config puts on a model, by loraWeightName, with its shape. */
export function loraWeightShapes(c: LlamaConfig, lora: LoraConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  for (const { name, out, inDim } of targets(c, lora)) {
    shapes.set(loraWeightName(name, "A"), [lora.r, inDim]);
    shapes.set(loraWeightName(name, "B"), [out, lora.r]);
  }
  return shapes;
}

function targets(c: LlamaConfig, lora: LoraConfig): { name: string; out: number; inDim: number }[] {
  const list: { name: string; out: number; inDim: number }[] = [];
  for (let l = 0; l < c.numHiddenLayers; l++) {
    for (const m of LINEAR_MODULES) {
      if (!lora.targetModules.includes(m)) continue;
      const [out, inDim] = linearShape(c, m);
      list.push({ name: linearName(l, m), out, inDim });
    }
  }
  return list;
}
