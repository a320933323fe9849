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
import { Rng } from "../rng.ts";
import { validateLlamaConfig, type LlamaConfig } from "./config.ts";
import type { LoraAdapter } from "./lora.ts";
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
  /** Return the residual stream after each layer (before the final norm), as HF's hidden_states[1..]. */
  returnLayerOutputs?: boolean;
  lora?: LoraAdapter;
  /** Enables LoRA dropout. */
  training?: boolean;
  /** Incremental decoding: attends to the cached keys and appends this call's. Inference only. */
  cache?: KvCache;
}

export interface ForwardResult {
  logits: tf.Tensor3D;
  attentionOutputs?: tf.Tensor3D[];
  hidden?: tf.Tensor3D;
  layerOutputs?: tf.Tensor3D[];
}

/**
 * Per-layer keys (after RoPE) and values, [B, kvHeads, S, headDim], plus the padding
 * mask of the cached positions. forward() appends to it and disposes what it replaces.
 */
export class KvCache {
  keys: tf.Tensor4D[] = [];
  values: tf.Tensor4D[] = [];
  mask: tf.Tensor2D | null = null;

  /** Number of cached positions, which is also the position offset of the next token. */
  get length(): number {
    return this.mask === null ? 0 : this.mask.shape[1];
  }

  /** Replaces the contents (tensors must already be kept out of any tidy). */
  replace(keys: tf.Tensor4D[], values: tf.Tensor4D[], mask: tf.Tensor2D): void {
    this.dispose();
    this.keys = keys;
    this.values = values;
    this.mask = mask;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
    this.mask?.dispose();
    this.keys = [];
    this.values = [];
    this.mask = null;
  }
}

/** RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * weight over the last axis. */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor, eps: number): T {
  return tf.tidy(() => x.mul(tf.rsqrt(x.square().mean(-1, true).add(eps))).mul(weight) as T);
}

/**
 * Rotary embedding, Hugging Face convention: x [B, H, T, D] at positions offset..offset+T-1,
 * x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1] over the two halves of D
 * and inv_freq_i = 1 / theta^(2i / D). Tables are computed in float64 on the host.
 */
export function applyRotary<T extends tf.Tensor>(x: T, offset: number, theta: number): T {
  const t = x.shape[x.rank - 2];
  const d = x.shape[x.rank - 1];
  const half = d / 2;
  const cos = new Float32Array(t * d);
  const sin = new Float32Array(t * d);
  for (let p = 0; p < t; p++) {
    for (let i = 0; i < half; i++) {
      const angle = (offset + p) / Math.pow(theta, (2 * i) / d);
      cos[p * d + i] = cos[p * d + i + half] = Math.cos(angle);
      sin[p * d + i] = sin[p * d + i + half] = Math.sin(angle);
    }
  }
  return tf.tidy(() => {
    const x1 = x.slice(sliceBegin(x.rank, 0), sliceSize(x.shape, half));
    const x2 = x.slice(sliceBegin(x.rank, half), sliceSize(x.shape, half));
    const rotated = tf.concat([x2.neg(), x1], -1);
    return x.mul(tf.tensor2d(cos, [t, d])).add(rotated.mul(tf.tensor2d(sin, [t, d]))) as T;
  });
}

function sliceBegin(rank: number, lastStart: number): number[] {
  return [...new Array<number>(rank - 1).fill(0), lastStart];
}

function sliceSize(shape: number[], lastSize: number): number[] {
  return [...shape.slice(0, -1).map(() => -1), lastSize];
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

/** Additive attention bias [B, 1, T, S]: 0 where allowed, -1e9 for future or padded keys. */
function attentionBias(keyMask: tf.Tensor2D, offset: number, t: number): tf.Tensor4D {
  const s = offset + t;
  const causal = new Float32Array(t * s);
  for (let i = 0; i < t; i++) for (let j = offset + i + 1; j < s; j++) causal[i * s + j] = -1e9;
  const padding = tf.scalar(1).sub(keyMask).mul(-1e9).reshape([keyMask.shape[0], 1, 1, s]);
  return padding.add(tf.tensor2d(causal, [t, s])) as tf.Tensor4D;
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
   * inputIds int32 [B, T]; attentionMask [B, T] (1 real, 0 pad) for these tokens only:
   * with a cache, the cached positions' mask is kept in the cache. Positions are the
   * index within the sequence (right padding) offset by the cache length.
   */
  forward(inputIds: tf.Tensor2D, attentionMask: tf.Tensor2D, opts: ForwardOptions = {}): ForwardResult {
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
    const cache = opts.cache;
    if (cache?.mask && cache.mask.shape[0] !== b) {
      throw new Error(`cache holds batch ${cache.mask.shape[0]}, inputs have batch ${b}`);
    }
    const offset = cache?.length ?? 0;
    const keptKeys: tf.Tensor4D[] = [];
    const keptValues: tf.Tensor4D[] = [];
    let keptMask: tf.Tensor2D | null = null;

    const result = tf.tidy(() => {
      const mask = attentionMask.toFloat();
      const keyMask = cache?.mask ? tf.concat([cache.mask, mask], 1) : mask;
      const bias = attentionBias(keyMask, offset, t);
      const attentionOutputs: tf.Tensor3D[] = [];
      const layerOutputs: tf.Tensor3D[] = [];
      let x = embedLookup(this.w("model.embed_tokens.weight") as tf.Tensor2D, inputIds);
      for (let l = 0; l < c.numHiddenLayers; l++) {
        const p = `model.layers.${l}`;
        const h = rmsNorm(x, this.w(`${p}.input_layernorm.weight`), c.rmsNormEps);
        const { out, keys, values } = this.attention(l, h, bias, offset, cache, opts);
        if (cache) {
          keptKeys.push(tf.keep(keys));
          keptValues.push(tf.keep(values));
        }
        if (opts.returnAttentionOutputs) attentionOutputs.push(out);
        x = x.add(opts.deltas ? out.add(opts.deltas[l]) : out);
        const h2 = rmsNorm(x, this.w(`${p}.post_attention_layernorm.weight`), c.rmsNormEps);
        const gate = this.linear(l, "gate_proj", h2, opts);
        const up = this.linear(l, "up_proj", h2, opts);
        x = x.add(this.linear(l, "down_proj", gate.mul(tf.sigmoid(gate)).mul(up), opts));
        if (opts.returnLayerOutputs) layerOutputs.push(x);
      }
      if (cache) keptMask = tf.keep(keyMask);
      const hidden = rmsNorm(x, this.w("model.norm.weight"), c.rmsNormEps);
      const head = this.w(c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
      const logits = linearT(hidden.reshape([b * t, c.hiddenSize]), head).reshape([b, t, c.vocabSize]);
      const res: ForwardResult = { logits: logits as tf.Tensor3D };
      if (opts.returnAttentionOutputs) res.attentionOutputs = attentionOutputs;
      if (opts.returnHidden) res.hidden = hidden;
      if (opts.returnLayerOutputs) res.layerOutputs = layerOutputs;
      return res as unknown as tf.TensorContainer;
    }) as unknown as ForwardResult;

    if (cache) cache.replace(keptKeys, keptValues, keptMask!);
    return result;
  }

  /** Causal grouped-query self-attention of layer l; returns A_l and the (cached) keys/values. */
  private attention(
    l: number,
    h: tf.Tensor3D,
    bias: tf.Tensor4D,
    offset: number,
    cache: KvCache | undefined,
    opts: ForwardOptions,
  ): { out: tf.Tensor3D; keys: tf.Tensor4D; values: tf.Tensor4D } {
    const c = this.config;
    const [b, t] = h.shape;
    const heads = c.numAttentionHeads;
    const kvHeads = c.numKeyValueHeads;
    const hd = c.headDim;
    const split = (y: tf.Tensor3D, n: number) => y.reshape([b, t, n, hd]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
    const q = applyRotary(split(this.linear(l, "q_proj", h, opts), heads), offset, c.ropeTheta);
    let k = applyRotary(split(this.linear(l, "k_proj", h, opts), kvHeads), offset, c.ropeTheta);
    let v = split(this.linear(l, "v_proj", h, opts), kvHeads);
    if (cache && cache.keys[l]) {
      k = tf.concat([cache.keys[l], k], 2);
      v = tf.concat([cache.values[l], v], 2);
    }
    const groups = heads / kvHeads;
    const scores = linearT(q, repeatKv(k, groups)); // [B, H, T, S]
    const probs = tf.softmax(scores.div(Math.sqrt(hd)).add(bias));
    const ctx = matmul(probs, repeatKv(v, groups)); // [B, H, T, hd]
    const merged = ctx.transpose([0, 2, 1, 3]).reshape([b, t, heads * hd]) as tf.Tensor3D;
    return { out: this.linear(l, "o_proj", merged, opts), keys: k, values: v };
  }

  /** y = x W^T (+ the LoRA update when an adapter targets this module). */
  private linear(l: number, module: LinearModule, x: tf.Tensor3D, opts: ForwardOptions): tf.Tensor3D {
    const [b, t, inDim] = x.shape;
    const name = linearName(l, module);
    const x2 = x.reshape([b * t, inDim]) as tf.Tensor2D;
    let y = linearT(x2, this.w(`${name}.weight`));
    const update = opts.lora?.update(name, x2, opts.training ?? false);
    if (update) y = y.add(update);
    return y.reshape([b, t, y.shape[1]]);
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
