/**
 * Hidden states for EmbedService and harmful embedding drift: each layer's attention
 * output A_l (the activation Vaccine perturbs) and the final hidden state, over real
 * tokens only, in batches so memory stays bounded whatever the number of texts.
 */
import * as tf from "@tensorflow/tfjs";
import type { LoadedCheckpoint } from "./load.ts";

export type Pooling = "mean" | "last" | "none";

/** A [rows, cols] matrix, row-major. */
export interface Matrix {
  rows: number;
  cols: number;
  values: Float32Array;
}

export interface TextStates {
  tokenCount: number;
  /** By requested layer (-1: the final hidden state), in request order. */
  layers: { layer: number; vectors: Matrix }[];
}

/** A text too long for the model, or a layer it does not have. */
export class EmbedRequestError extends Error {
  constructor(readonly field: string, message: string) {
    super(message);
  }
}

const BATCH = 16;

/** Token ids of raw texts (no template), bos first when the tokenizer adds it. */
export function textIds(loaded: Pick<LoadedCheckpoint, "tokenizer">, text: string): number[] {
  const t = loaded.tokenizer;
  return [...(t.addBos && t.bosId !== null ? [t.bosId] : []), ...t.encode(text)];
}

/** Right-padded ids and mask of token rows, as tensors. */
export function padded(rows: number[][], padId: number): { ids: tf.Tensor2D; mask: tf.Tensor2D; lengths: number[] } {
  const t = Math.max(...rows.map((r) => r.length));
  const ids = new Int32Array(rows.length * t).fill(padId);
  const mask = new Int32Array(rows.length * t);
  rows.forEach((r, b) => r.forEach((id, i) => ((ids[b * t + i] = id), (mask[b * t + i] = 1))));
  return { ids: tf.tensor2d(ids, [rows.length, t], "int32"), mask: tf.tensor2d(mask, [rows.length, t], "int32"), lengths: rows.map((r) => r.length) };
}

function pool(all: Float32Array, length: number, d: number, pooling: Pooling): Matrix {
  if (pooling === "none") return { rows: length, cols: d, values: all.slice(0, length * d) };
  if (pooling === "last") return { rows: 1, cols: d, values: all.slice((length - 1) * d, length * d) };
  const mean = new Float32Array(d);
  for (let i = 0; i < length; i++) for (let j = 0; j < d; j++) mean[j] += all[i * d + j];
  for (let j = 0; j < d; j++) mean[j] /= length;
  return { rows: 1, cols: d, values: mean };
}

/**
 * Hidden states of texts. `layers` are 0-based decoder layers; `final` adds the final
 * hidden state (layer -1). Padding never changes a text's vectors: only its real tokens
 * are read, and attention masks padded keys.
 */
export function hiddenStates(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  texts: string[],
  opts: { layers: number[]; final: boolean; pooling: Pooling; maxTokens: number },
): TextStates[] {
  const { model } = loaded;
  const c = model.config;
  opts.layers.forEach((l, i) => {
    if (!Number.isInteger(l) || l < 0 || l >= c.numHiddenLayers) {
      throw new EmbedRequestError(`layers[${i}]`, `layer ${l} does not exist: the model has layers 0 to ${c.numHiddenLayers - 1}`);
    }
  });
  const rows = texts.map((text, i) => {
    const ids = textIds(loaded, text);
    if (ids.length === 0) throw new EmbedRequestError(`texts[${i}]`, "encodes to no tokens");
    const limit = Math.min(opts.maxTokens, c.maxPositionEmbeddings);
    if (ids.length > limit) throw new EmbedRequestError(`texts[${i}]`, `is ${ids.length} tokens long; the limit is ${limit}`);
    return ids;
  });
  const out: TextStates[] = [];
  for (let start = 0; start < rows.length; start += BATCH) {
    const batch = rows.slice(start, start + BATCH);
    const { ids, mask, lengths } = padded(batch, loaded.tokenizer.padId);
    const t = ids.shape[1];
    const d = c.hiddenSize;
    const arrays = tf.tidy(() => {
      const res = model.forward(ids, mask, { lora: loaded.adapter, returnAttentionOutputs: opts.layers.length > 0, returnHidden: opts.final });
      const picked = opts.layers.map((l) => res.attentionOutputs![l]);
      if (opts.final) picked.push(res.hidden!);
      return picked.map((x) => x.dataSync() as Float32Array);
    });
    tf.dispose([ids, mask]);
    lengths.forEach((length, b) => {
      const layerIds = [...opts.layers, ...(opts.final ? [-1] : [])];
      out.push({
        tokenCount: length,
        layers: layerIds.map((layer, k) => ({ layer, vectors: pool(arrays[k].subarray(b * t * d, (b + 1) * t * d), length, d, opts.pooling) })),
      });
    });
  }
  return out;
}
