/**
 * A Llama-style decoder in tfjs, in one readable file (nanoGPT style): token embedding,
 * RMSNorm, rotary positions (Hugging Face rotate_half convention), causal grouped-query
 * attention, SwiGLU MLP, final norm and an untied or tied head. Weight names and
 * layouts are exactly those of Hugging Face Llama checkpoints ([out, in] linears, no
 * biases), so such a checkpoint loads without conversion.
 *
 * The forward pass takes one optional additive delta per layer on the attention output
 * A_l (after o_proj, before the residual add): the hook Vaccine's perturbation,
 * hidden-state extraction and embedding drift all need.
 *
 * Only ops that exist on every backend are used (wasm lacks UnsortedSegmentSum, Einsum,
 * Pad and rank-5 Tile gradients), so one code path serves tensorflow, wasm and cpu; and
 * matMul never gets transpose flags, which are slow on wasm (see matmul.ts).
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointFormatError } from "../format-error.ts";
import type { HostTensor, HostTensors } from "../host-tensor.ts";
import { attentionKernel } from "../native/attention-kernel.ts";
import { attentionBlockKernel, mlpBlockKernel, type BlockProjection, type RowEnds } from "../native/decoder-block-kernel.ts";
import { nativeKernelsActive } from "../native/kernels.ts";
import { rmsNormKernel } from "../native/rms-norm-kernel.ts";
import { swigluKernel } from "../native/swiglu-kernel.ts";
import { Rng } from "../rng.ts";
import { validateLlamaConfig, type LlamaConfig } from "./config.ts";
import type { LoraAdapter } from "./lora.ts";
import { cachedBias, cacheStep, KvCache, placement, written, type CacheStep } from "./kv-cache.ts";
import { linearT, matmul } from "./matmul.ts";

export { linearT, matmul };

/**
 * The projection modules LoRA may target, by their Hugging Face short names: the runtime's
 * one list (validation, defaults and the weight layout all read it).
 */
export const LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LinearModule = (typeof LINEAR_MODULES)[number];

/** The decoder-layer block holding a projection. */
function blockOf(module: LinearModule): "self_attn" | "mlp" {
  return module === "gate_proj" || module === "up_proj" || module === "down_proj" ? "mlp" : "self_attn";
}

/** Full weight name prefix of a projection, e.g. "model.layers.3.self_attn.q_proj". */
export function linearName(layer: number, module: LinearModule): string {
  return `model.layers.${layer}.${blockOf(module)}.${module}`;
}

/** [out, in] of a projection, as stored in the checkpoint. */
export function linearShape(c: LlamaConfig, module: LinearModule): [number, number] {
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  switch (module) {
    case "q_proj":
      return [q, d];
    case "k_proj":
    case "v_proj":
      return [kv, d];
    case "o_proj":
      return [d, q];
    case "gate_proj":
    case "up_proj":
      return [c.intermediateSize, d];
    case "down_proj":
      return [d, c.intermediateSize];
  }
}

/**
 * The number of weights a config describes (a tied head counted once), by arithmetic alone:
 * what a loader compares with the bytes on disk before it builds or allocates anything.
 */
export function llamaParameterCount(c: LlamaConfig): number {
  const d = c.hiddenSize;
  const perLayer = 2 * d + LINEAR_MODULES.reduce((n, m) => n + linearShape(c, m).reduce((a, b) => a * b, 1), 0);
  return c.vocabSize * d * (c.tieWordEmbeddings ? 1 : 2) + c.numHiddenLayers * perLayer + d;
}

/** Every weight the model holds, by Hugging Face name, with its shape, in a fixed order. */
export function llamaWeightShapes(c: LlamaConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  shapes.set("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize]);
  for (let i = 0; i < c.numHiddenLayers; i++) {
    shapes.set(`model.layers.${i}.input_layernorm.weight`, [c.hiddenSize]);
    for (const m of LINEAR_MODULES.filter((x) => blockOf(x) === "self_attn")) shapes.set(`${linearName(i, m)}.weight`, linearShape(c, m));
    shapes.set(`model.layers.${i}.post_attention_layernorm.weight`, [c.hiddenSize]);
    for (const m of LINEAR_MODULES.filter((x) => blockOf(x) === "mlp")) shapes.set(`${linearName(i, m)}.weight`, linearShape(c, m));
  }
  shapes.set("model.norm.weight", [c.hiddenSize]);
  if (!c.tieWordEmbeddings) shapes.set("lm_head.weight", [c.vocabSize, c.hiddenSize]);
  return shapes;
}

export interface ForwardOptions {
  /** One [B, T, hidden] tensor per layer, added to A_l (after o_proj, before the residual add). */
  deltas?: tf.Tensor[];
  /** Return A_l per layer, WITHOUT its delta: the activation Vaccine perturbs and drift compares. */
  returnAttentionOutputs?: boolean;
  /** Return the final hidden states (after the final norm). */
  returnHidden?: boolean;
  /**
   * Return the residual stream after each layer, before the final norm: HF's hidden_states[1..L-1]
   * and, for the last layer, its hidden_states[L] without the final norm (HF applies it there).
   */
  returnLayerOutputs?: boolean;
  lora?: LoraAdapter;
  /** Enables LoRA dropout. */
  training?: boolean;
  /**
   * False when the caller differentiates no adapter weight (Vaccine's perturbation pass): the
   * fused decoder blocks then skip the adapters' gradients, which autodiff would otherwise
   * compute with the input's.
   */
  adapterGradients?: boolean;
  /** Incremental decoding: attends to the cached keys and appends this call's. Inference only. */
  cache?: KvCache;
  /**
   * Per row, the one position whose logits to compute; logits are then [B, 1, vocab]. A
   * prefill needs only each prompt's last position, and the head is the widest product.
   */
  logitsAt?: number[];
  /**
   * Attention's softmax from exp and sum ops, whose sums do not change when masked keys
   * trail a row, instead of the fused kernel (wasm's sums depend on the row's padded
   * length): a right-padded row then gets the same outputs, bitwise, as alone, on kernels
   * whose products do not depend on the number of rows. Inference only (autodiff through it
   * costs more); the cache path always uses it.
   */
  batchInvariant?: boolean;
}

export interface ForwardResult {
  logits: tf.Tensor3D;
  attentionOutputs?: tf.Tensor3D[];
  hidden?: tf.Tensor3D;
  layerOutputs?: tf.Tensor3D[];
}


/** RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * weight over the last axis (one kernel when the native ones are active). */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor, eps: number): T {
  if (nativeKernelsActive() && x.dtype === "float32" && weight.rank === 1) return rmsNormKernel(x, weight as tf.Tensor1D, eps);
  return tf.tidy(() => x.mul(tf.rsqrt(x.square().mean(-1, true).add(eps))).mul(weight) as T);
}

/** The MLP's SwiGLU product silu(gate) * up (one kernel when the native ones are active). */
export function swiglu(gate: tf.Tensor3D, up: tf.Tensor3D): tf.Tensor3D {
  if (nativeKernelsActive()) return swigluKernel(gate, up);
  return tf.tidy(() => gate.mul(tf.sigmoid(gate)).mul(up));
}

/**
 * Rotary embedding, Hugging Face convention: x [B, H, T, D] at positions offset..offset+T-1
 * (offset per row when an array: rows of a batch decoded at different lengths),
 * x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1] over the two halves of D
 * and inv_freq_i = 1 / theta^(2i / D). Tables are computed in float64 on the host.
 */
export function applyRotary<T extends tf.Tensor>(x: T, offset: number | number[], theta: number): T {
  const t = x.shape[x.rank - 2];
  const d = x.shape[x.rank - 1];
  const starts = typeof offset === "number" ? [offset] : offset;
  const { cos, sin } = rotaryTables(starts, t, d, theta);
  // [T, D] broadcasts over every leading axis; per row, [B, 1, T, D] over the heads.
  const tableShape = typeof offset === "number" ? [t, d] : [starts.length, 1, t, d];
  return tf.tidy(() => {
    // rotate_half as one product with a signed permutation: the same values, bitwise (each
    // output is one input times +-1 plus zeros), and one matmul forward and backward instead
    // of two slices, a negation and a concat, which the wasm backend copies element by
    // element in JavaScript.
    const rotated = tf.matMul(x.reshape([-1, d]), tf.tensor2d(rotateHalfMatrix(d), [d, d])).reshape(x.shape);
    return x.mul(tf.tensor(cos, tableShape)).add(rotated.mul(tf.tensor(sin, tableShape))) as T;
  });
}

/** cos and sin of the rotary angles, [starts.length, T, D] row-major: position start + p, inv_freq_i = 1 / theta^(2i / D). */
function rotaryTables(starts: number[], t: number, d: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const half = d / 2;
  const cos = new Float32Array(starts.length * t * d);
  const sin = new Float32Array(starts.length * t * d);
  starts.forEach((start, r) => {
    for (let p = 0; p < t; p++) {
      const row = (r * t + p) * d;
      for (let i = 0; i < half; i++) {
        const angle = (start + p) / Math.pow(theta, (2 * i) / d);
        cos[row + i] = cos[row + i + half] = Math.cos(angle);
        sin[row + i] = sin[row + i + half] = Math.sin(angle);
      }
    }
  });
  return { cos, sin };
}

const rotateHalfMatrices = new Map<number, Float32Array>();

/** R with x R = rotate_half(x) = [-x[half:], x[:half]] for rows x of length d. */
function rotateHalfMatrix(d: number): Float32Array {
  let r = rotateHalfMatrices.get(d);
  if (!r) {
    const half = d / 2;
    r = new Float32Array(d * d);
    for (let i = 0; i < half; i++) {
      r[(i + half) * d + i] = -1;
      r[i * d + i + half] = 1;
    }
    rotateHalfMatrices.set(d, r);
  }
  return r;
}

/**
 * Embedding lookup as a gather whose gradient is oneHot(ids)^T x dy: tf.gather's own
 * gradient needs UnsortedSegmentSum, which the wasm backend lacks (and this is faster on cpu).
 */
export function embedLookup(table: tf.Tensor2D, ids: tf.Tensor2D): tf.Tensor3D {
  const [b, t] = ids.shape;
  const [vocab, d] = table.shape;
  // customGrad's signature is variadic: (...inputs, save).
  const lookup = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const tbl = args[0] as tf.Tensor;
    const save = args[1] as tf.GradSaveFunc;
    const flat = ids.reshape([b * t]);
    save([flat]);
    return {
      value: tf.gather(tbl, flat).reshape([b, t, d]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.matMul(tf.oneHot(saved[0], vocab).transpose(), dy.reshape([b * t, d])),
    };
  });
  return lookup(table) as tf.Tensor3D;
}

/**
 * Per row, 1 + the position of its last real token (RowEnds: the decoder blocks skip the
 * positions after it); undefined when every row's last position is real. Read on the host:
 * masks are inputs, never computed.
 */
function rowEnds(attentionMask: tf.Tensor2D): RowEnds {
  const [b, t] = attentionMask.shape;
  const mask = attentionMask.dataSync();
  const ends = new Int32Array(b);
  for (let i = 0; i < b; i++) {
    let end = t;
    while (end > 0 && mask[i * t + end - 1] === 0) end--;
    ends[i] = end;
  }
  return ends.every((e) => e === t) ? undefined : tf.tensor1d(ends, "int32");
}

/** Additive attention bias [B, 1, T, T] of an uncached call: 0 where allowed, -1e9 for future or padded keys. */
function attentionBias(keyMask: tf.Tensor2D): tf.Tensor4D {
  const t = keyMask.shape[1];
  const causal = new Float32Array(t * t);
  for (let i = 0; i < t; i++) for (let j = i + 1; j < t; j++) causal[i * t + j] = -1e9;
  const padding = tf.scalar(1).sub(keyMask).mul(-1e9).reshape([keyMask.shape[0], 1, 1, t]);
  return padding.add(tf.tensor2d(causal, [t, t])) as tf.Tensor4D;
}

/** How a forward call attends: its bias, its positions, and with a cache how it writes there. */
interface Attend {
  bias: tf.Tensor4D;
  /** The first position: one for all rows, or one per row. */
  offset: number | number[];
  /** Softmax whose sums trailing masked keys do not change (ForwardOptions.batchInvariant). */
  exact: boolean;
  step?: CacheStep;
  /** See placement(). */
  placement?: tf.Tensor | null;
  /** Set when attention runs as one native kernel (uncached, not exact): the rotary tables [T, d], made once for every layer. */
  fused?: { cos: tf.Tensor2D; sin: tf.Tensor2D };
}

/** The fused attention's rotary tables for positions 0..t-1. */
function fusedRotary(t: number, d: number, theta: number): Attend["fused"] {
  const { cos, sin } = rotaryTables([0], t, d, theta);
  return { cos: tf.tensor2d(cos, [t, d]), sin: tf.tensor2d(sin, [t, d]) };
}

/** softmax(x) as exp(x - max) / sum over the last axis (see ForwardOptions.batchInvariant). */
function paddingInvariantSoftmax(x: tf.Tensor4D): tf.Tensor4D {
  const e = x.sub(x.max(-1, true)).exp();
  return e.div(e.sum(-1, true));
}

export class LlamaModel {
  readonly config: LlamaConfig;
  /** Weights by Hugging Face name (lm_head absent when tied). */
  readonly weights: Map<string, tf.Variable>;

  private constructor(config: LlamaConfig, weights: Map<string, tf.Variable>) {
    this.config = config;
    this.weights = weights;
  }

  /**
   * Builds a model from host tensors named as in a Hugging Face Llama checkpoint.
   * Every expected tensor must be present with its exact shape; unknown names are an
   * error, except the two that real checkpoints carry harmlessly: lm_head.weight of a
   * tied model and the precomputed rotary_emb.inv_freq buffers.
   */
  static fromWeights(config: LlamaConfig, weights: HostTensors, opts: { trainable?: boolean } = {}): LlamaModel {
    validateLlamaConfig(config);
    const expected = llamaWeightShapes(config);
    const problems: string[] = [];
    for (const [name, shape] of expected) {
      const w = weights.get(name);
      if (!w) problems.push(`missing ${name} ${fmt(shape)}`);
      else if (!sameShape(w.shape, shape)) problems.push(`${name} has shape ${fmt(w.shape)}, expected ${fmt(shape)}`);
      else if (w.data.length !== shape.reduce((a, b) => a * b, 1)) problems.push(`${name} has ${w.data.length} values for shape ${fmt(shape)}`);
    }
    for (const name of weights.keys()) {
      if (expected.has(name) || name.endsWith(".rotary_emb.inv_freq")) continue;
      if (name === "lm_head.weight" && config.tieWordEmbeddings) continue;
      problems.push(`unexpected ${name}`);
    }
    if (problems.length > 0) throw new CheckpointFormatError(`Llama weights do not match the config: ${problems.join("; ")}`);
    const trainable = opts.trainable ?? false;
    const vars = new Map<string, tf.Variable>();
    for (const [name, shape] of expected) {
      const w = weights.get(name)!;
      // Variables are left unnamed: tfjs names are global, and several models coexist.
      vars.set(name, tf.tidy(() => tf.variable(tf.tensor(w.data, shape, "float32"), trainable)));
    }
    return new LlamaModel(config, vars);
  }

  /** Seeded random init: normal(0, initStd = 0.02) for embeddings and linears, ones for norms. */
  static init(config: LlamaConfig, seed: number, opts: { trainable?: boolean; initStd?: number } = {}): LlamaModel {
    validateLlamaConfig(config);
    const rng = new Rng(seed);
    const weights: HostTensors = new Map();
    for (const [name, shape] of llamaWeightShapes(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = name.endsWith("norm.weight") ? new Float32Array(n).fill(1) : rng.normalArray(n, opts.initStd ?? 0.02);
      weights.set(name, { shape, data });
    }
    return LlamaModel.fromWeights(config, weights, opts);
  }

  /** The head's weight [vocab, hidden]: lm_head's, or the embedding's when they are tied. */
  get head(): tf.Tensor2D {
    return this.w(this.config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight") as tf.Tensor2D;
  }

  /** All weights, for full-weight training (see setTrainable). */
  get trainableVariables(): tf.Variable[] {
    return [...this.weights.values()];
  }

  /** Marks every weight trainable (full training) or frozen (adapter training). */
  setTrainable(trainable: boolean): void {
    for (const v of this.weights.values()) v.trainable = trainable;
  }

  /** A host copy of every weight, in Hugging Face naming. */
  exportWeights(): HostTensors {
    const out: HostTensors = new Map();
    for (const [name, v] of this.weights) out.set(name, toHost(v));
    return out;
  }

  dispose(): void {
    for (const v of this.weights.values()) v.dispose();
    this.weights.clear();
  }

  /** A fresh, empty cache for incremental decoding with this model. */
  createCache(): KvCache {
    return new KvCache();
  }

  /**
   * inputIds int32 [B, T]; attentionMask [B, T] (1 real, 0 pad). Without a cache, positions
   * are the index within the sequence (right padding). With one, the mask covers these
   * tokens only and must be right-padded: row b's tokens take positions from the row's cached
   * length on (see KvCache); a call may add several tokens per row while every row has the
   * same length (a prefill), else one.
   */
  forward(inputIds: tf.Tensor2D, attentionMask: tf.Tensor2D, opts: ForwardOptions = {}): ForwardResult {
    return this.pass(inputIds, attentionMask, opts, true) as ForwardResult;
  }

  /**
   * forward() without the LM head, for callers that read only hidden states (Embed, drift,
   * classifiers): the head is the widest product of a small model (vocab x hidden per token,
   * more than a layer's projections on the built-in model).
   */
  states(inputIds: tf.Tensor2D, attentionMask: tf.Tensor2D, opts: Omit<ForwardOptions, "cache" | "logitsAt"> = {}): Omit<ForwardResult, "logits"> {
    return this.pass(inputIds, attentionMask, opts, false);
  }

  private pass(inputIds: tf.Tensor2D, attentionMask: tf.Tensor2D, opts: ForwardOptions, head: boolean): Omit<ForwardResult, "logits"> & { logits?: tf.Tensor3D } {
    const c = this.config;
    const [b, t] = inputIds.shape;
    if (!sameShape(attentionMask.shape, [b, t])) {
      throw new Error(`attentionMask shape ${fmt(attentionMask.shape)} must equal inputIds shape ${fmt([b, t])}`);
    }
    if (opts.deltas) {
      if (opts.deltas.length !== c.numHiddenLayers) {
        throw new Error(`deltas: expected one per layer (${c.numHiddenLayers}), got ${opts.deltas.length}`);
      }
      opts.deltas.forEach((d, i) => {
        if (!sameShape(d.shape, [b, t, c.hiddenSize])) {
          throw new Error(`deltas[${i}] shape ${fmt(d.shape)}, expected ${fmt([b, t, c.hiddenSize])}`);
        }
      });
    }
    const logitsAt = opts.logitsAt;
    if (logitsAt && (logitsAt.length !== b || logitsAt.some((p) => !Number.isInteger(p) || p < 0 || p >= t))) {
      throw new Error(`logitsAt: expected ${b} positions in [0, ${t}), got [${logitsAt.join(", ")}]`);
    }
    const step = opts.cache ? cacheStep(opts.cache, attentionMask) : undefined;
    const keptKeys: tf.Tensor4D[] = [];
    const keptValues: tf.Tensor4D[] = [];

    const result = tf.tidy(() => {
      const attend: Attend = step
        ? { bias: cachedBias(step, t), offset: t > 1 ? step.starts[0] : step.starts, step, placement: placement(step, t, c.numKeyValueHeads), exact: true }
        : {
            bias: attentionBias(attentionMask.toFloat()),
            offset: 0,
            exact: opts.batchInvariant ?? false,
            fused: !opts.batchInvariant && nativeKernelsActive() ? fusedRotary(t, c.headDim, c.ropeTheta) : undefined,
          };
      const attentionOutputs: tf.Tensor3D[] = [];
      const layerOutputs: tf.Tensor3D[] = [];
      // A layer's two blocks as one native kernel each where nothing asks for a weight's gradient.
      const blocks = attend.fused && this.frozen() ? { ...attend.fused, bias: attend.bias, ends: rowEnds(attentionMask) } : undefined;
      let x = embedLookup(this.w("model.embed_tokens.weight") as tf.Tensor2D, inputIds);
      for (let l = 0; l < c.numHiddenLayers; l++) {
        if (blocks && !opts.returnAttentionOutputs) {
          // The residual add (and the delta's) inside the block: A_l itself is not asked for.
          x = this.attentionBlock(l, x, blocks, opts, { delta: opts.deltas?.[l] });
        } else {
          const { out, keys, values } = blocks
            ? { out: this.attentionBlock(l, x, blocks, opts) }
            : this.attention(l, rmsNorm(x, this.w(`model.layers.${l}.input_layernorm.weight`), c.rmsNormEps), attend, opts);
          if (step) {
            keptKeys.push(tf.keep(keys!));
            keptValues.push(tf.keep(values!));
          }
          if (opts.returnAttentionOutputs) attentionOutputs.push(out);
          x = x.add(opts.deltas ? out.add(opts.deltas[l]) : out);
        }
        x = blocks ? this.mlpBlock(l, x, opts, blocks.ends) : x.add(this.mlp(l, x, opts));
        if (opts.returnLayerOutputs) layerOutputs.push(x);
      }
      const res: Omit<ForwardResult, "logits"> & { logits?: tf.Tensor3D } = {};
      if (head || opts.returnHidden) {
        const hidden = rmsNorm(x, this.w("model.norm.weight"), c.rmsNormEps);
        if (head) {
          let rows = hidden.reshape([b * t, c.hiddenSize]);
          if (logitsAt) rows = tf.gather(rows, tf.tensor1d(logitsAt.map((p, r) => r * t + p), "int32"));
          res.logits = linearT(rows, this.head).reshape([b, logitsAt ? 1 : t, c.vocabSize]) as tf.Tensor3D;
        }
        if (opts.returnHidden) res.hidden = hidden;
      }
      if (opts.returnAttentionOutputs) res.attentionOutputs = attentionOutputs;
      if (opts.returnLayerOutputs) res.layerOutputs = layerOutputs;
      return res as unknown as tf.TensorContainer;
    }) as unknown as Omit<ForwardResult, "logits">;

    if (step) step.cache.replace(keptKeys, keptValues, step.lengths);
    return result;
  }

  /** Causal grouped-query self-attention of layer l: A_l and, with a cache, this call's keys and values as cached. */
  private attention(l: number, h: tf.Tensor3D, attend: Attend, opts: ForwardOptions): { out: tf.Tensor3D; keys?: tf.Tensor4D; values?: tf.Tensor4D } {
    const c = this.config;
    const [b, t] = h.shape;
    const heads = c.numAttentionHeads;
    const kvHeads = c.numKeyValueHeads;
    const hd = c.headDim;
    if (attend.fused) {
      // One kernel from the projections to the context (native/attention-kernel.ts).
      const [q, k, v] = (["q_proj", "k_proj", "v_proj"] as const).map((m) => this.linear(l, m, h, opts));
      const ctx = attentionKernel(q, k, v, attend.bias, attend.fused.cos, attend.fused.sin, { heads, kvHeads, headDim: hd });
      return { out: this.linear(l, "o_proj", ctx, opts) };
    }
    const split = (y: tf.Tensor3D, n: number) => y.reshape([b, t, n, hd]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
    const q = applyRotary(split(this.linear(l, "q_proj", h, opts), heads), attend.offset, c.ropeTheta);
    let k = applyRotary(split(this.linear(l, "k_proj", h, opts), kvHeads), attend.offset, c.ropeTheta);
    let v = split(this.linear(l, "v_proj", h, opts), kvHeads);
    if (attend.step) {
      k = written(attend.step, attend.placement ?? null, attend.step.cache.keys[l], k);
      v = written(attend.step, attend.placement ?? null, attend.step.cache.values[l], v);
    }
    const groups = heads / kvHeads;
    const scores = linearT(q, repeatKv(k, groups)).div(Math.sqrt(hd)).add(attend.bias) as tf.Tensor4D; // [B, H, T, S]
    const probs = attend.exact ? paddingInvariantSoftmax(scores) : tf.softmax(scores);
    const ctx = matmul(probs, repeatKv(v, groups)); // [B, H, T, hd]
    const merged = ctx.transpose([0, 2, 1, 3]).reshape([b, t, heads * hd]) as tf.Tensor3D;
    return { out: this.linear(l, "o_proj", merged, opts), keys: k, values: v };
  }

  /** The MLP block of layer l on the residual stream x: down(silu(gate(n)) * up(n)), n = RMSNorm(x). */
  private mlp(l: number, x: tf.Tensor3D, opts: ForwardOptions): tf.Tensor3D {
    const h = rmsNorm(x, this.w(`model.layers.${l}.post_attention_layernorm.weight`), this.config.rmsNormEps);
    return this.linear(l, "down_proj", swiglu(this.linear(l, "gate_proj", h, opts), this.linear(l, "up_proj", h, opts)), opts);
  }

  /** Layer l's attention block (its RMSNorm to o_proj) as one native kernel: A_l, or with `residual` x + A_l (+ delta). */
  private attentionBlock(
    l: number,
    x: tf.Tensor3D,
    { ends, ...rotary }: { bias: tf.Tensor4D; cos: tf.Tensor2D; sin: tf.Tensor2D; ends: RowEnds },
    opts: ForwardOptions,
    residual?: { delta?: tf.Tensor },
  ): tf.Tensor3D {
    const c = this.config;
    const [b, t] = x.shape;
    const input = [b, t, c.hiddenSize];
    // The masks drawn in the unfused order: q, k, v, then o on the context.
    const projections = [
      this.blockProjection(l, "q_proj", input, opts),
      this.blockProjection(l, "k_proj", input, opts),
      this.blockProjection(l, "v_proj", input, opts),
      this.blockProjection(l, "o_proj", [b, t, c.numAttentionHeads * c.headDim], opts),
    ] as const;
    const shape = { heads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads, headDim: c.headDim };
    // The first layer's input is the embedding of frozen weights: no gradient needed.
    const grads = { input: l > 0, adapters: opts.adapterGradients !== false };
    return attentionBlockKernel(x, this.w(`model.layers.${l}.input_layernorm.weight`) as tf.Tensor1D, c.rmsNormEps, projections, rotary, shape, opts.lora?.scaling ?? 1, grads, ends, residual);
  }

  /** Layer l's MLP block (its RMSNorm to down_proj) and the residual add as one native kernel: x + mlp(x). */
  private mlpBlock(l: number, x: tf.Tensor3D, opts: ForwardOptions, ends: RowEnds): tf.Tensor3D {
    const c = this.config;
    const [b, t] = x.shape;
    const projections = [
      this.blockProjection(l, "gate_proj", [b, t, c.hiddenSize], opts),
      this.blockProjection(l, "up_proj", [b, t, c.hiddenSize], opts),
      this.blockProjection(l, "down_proj", [b, t, c.intermediateSize], opts),
    ] as const;
    const grads = { input: true, adapters: opts.adapterGradients !== false };
    return mlpBlockKernel(x, this.w(`model.layers.${l}.post_attention_layernorm.weight`) as tf.Tensor1D, c.rmsNormEps, projections, opts.lora?.scaling ?? 1, grads, true, ends);
  }

  /** A projection's weight and adapter for a block kernel, its dropout mask drawn for an input of `shape`. */
  private blockProjection(l: number, module: LinearModule, shape: number[], opts: ForwardOptions): BlockProjection {
    const name = linearName(l, module);
    return { w: this.w(`${name}.weight`) as tf.Tensor2D, adapter: opts.lora?.branch(name, shape, opts.training ?? false) };
  }

  /** Whether no weight is trainable (adapter training or inference): no weight gradient is asked for. */
  private frozen(): boolean {
    for (const v of this.weights.values()) if (v.trainable) return false;
    return true;
  }

  /** y = x W^T (+ the LoRA update when an adapter targets this module). */
  private linear(l: number, module: LinearModule, x: tf.Tensor3D, opts: ForwardOptions): tf.Tensor3D {
    const [b, t, inDim] = x.shape;
    const name = linearName(l, module);
    const w = this.w(`${name}.weight`) as tf.Tensor2D;
    if (opts.lora) return opts.lora.linear(name, x, w, opts.training ?? false);
    return linearT(x.reshape([b * t, inDim]) as tf.Tensor2D, w).reshape([b, t, w.shape[0]]);
  }

  private w(name: string): tf.Variable {
    const v = this.weights.get(name);
    if (!v) throw new Error(`model has no weight ${name} (disposed?)`);
    return v;
  }
}

/** Repeats kv heads [B, KV, S, D] to [B, KV*n, S, D] (head h reads kv head floor(h/n), as HF). */
function repeatKv(kv: tf.Tensor4D, n: number): tf.Tensor4D {
  if (n === 1) return kv;
  const [b, kvHeads, s, d] = kv.shape;
  // Tile in rank 4: the Tile gradient is not implemented for rank 5.
  return kv.reshape([b, kvHeads, 1, s * d]).tile([1, 1, n, 1]).reshape([b, kvHeads * n, s, d]) as tf.Tensor4D;
}

export function toHost(t: tf.Tensor): HostTensor {
  return { shape: [...t.shape], data: Float32Array.from(t.dataSync() as Float32Array) };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function fmt(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
