/**
 * Hidden states for EmbedService and harmful embedding drift: each layer's attention
 * output A_l (the activation Vaccine perturbs) and the final hidden state, over real
 * tokens only, in batches so memory stays bounded whatever the number of texts.
 */
import * as tf from "@tensorflow/tfjs";
import type { LoadedCheckpoint } from "./load.ts";
import { runSteps, runStepsServed } from "../next-turn.ts";
import { bosPrefix } from "../tokenizer.ts";

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

/** Texts too long for the model, layers it does not have, or too large a response: every one of a call's, by field. */
export class EmbedRequestError extends Error {
  constructor(readonly violations: { field: string; description: string }[]) {
    super(violations.map((v) => `${v.field}: ${v.description}`).join("; "));
  }
}

/**
 * Rows x longest row of one forward pass: bounds its activations (the [B, H, T, T]
 * attention, the [B, T, intermediate] MLP) whatever the number of texts.
 */
export const FORWARD_TOKENS = 4096;

export interface StatesOptions {
  /** 0-based decoder layers whose attention output A_l to return. */
  layers: number[];
  /** Also return the final hidden state (layer -1). */
  final: boolean;
  pooling: Pooling;
  /** Longest text in tokens (and never more than the model's positions). */
  maxTokens: number;
  /** Most numbers one caller's states may hold (its response's size); unset: no bound. */
  maxValues?: number;
}

/** Token ids of raw texts (no template), bos first when the tokenizer adds it. */
export function textIds(loaded: Pick<LoadedCheckpoint, "tokenizer">, text: string): number[] {
  const t = loaded.tokenizer;
  return [...bosPrefix(t), ...t.encode(text)];
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
 * Hidden states of texts. Padding never changes a text's vectors: only its real tokens
 * are read, attention masks padded keys, and its softmax sums do not depend on the padding
 * (ForwardOptions.batchInvariant), so a text gets the same vectors whatever it is batched
 * with (bitwise on kernels whose products do not depend on the number of rows).
 */
export function hiddenStates(loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">, texts: string[], opts: StatesOptions): TextStates[] {
  const [states] = runSteps(statesOfEach(loaded, [texts], opts));
  if (states instanceof EmbedRequestError) throw states;
  return states;
}

/**
 * Hidden states of several callers' texts in shared forward passes: each caller gets its
 * texts' states, or the error of its first bad text (a bad text fails its caller alone). A
 * layer the model lacks fails every caller: the layers are the same for all. Between forward
 * passes it hands the event loop back (other calls are served between the passes of a large
 * batch; a batch of one pass takes no extra turn), then checks `signal`: once it has aborted
 * (every caller gave up), no further pass is computed and the promise rejects with its reason.
 */
export function hiddenStatesOfEach(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  textsEach: string[][],
  opts: StatesOptions,
  signal?: AbortSignal,
): Promise<(TextStates[] | EmbedRequestError)[]> {
  return runStepsServed(statesOfEach(loaded, textsEach, opts), signal);
}

/** hiddenStatesOfEach's work, yielding between forward passes. */
function* statesOfEach(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  textsEach: string[][],
  opts: StatesOptions,
): Generator<void, (TextStates[] | EmbedRequestError)[], void> {
  const c = loaded.model.config;
  // The layers are every caller's: each fails with them, beside its own texts' violations.
  const badLayers = opts.layers.flatMap((l, i) =>
    Number.isInteger(l) && l >= 0 && l < c.numHiddenLayers ? [] : [{ field: `layers[${i}]`, description: `layer ${l} does not exist: the model has layers 0 to ${c.numHiddenLayers - 1}` }],
  );
  const limit = Math.min(opts.maxTokens, c.maxPositionEmbeddings);
  const perVector = (opts.layers.length + (opts.final ? 1 : 0)) * c.hiddenSize;
  const rowsEach = textsEach.map((texts) => {
    const violations = [...badLayers];
    const rows = texts.map((text, i) => {
      const ids = textIds(loaded, text);
      if (ids.length === 0) violations.push({ field: `texts[${i}]`, description: "encodes to no tokens" });
      else if (ids.length > limit) violations.push({ field: `texts[${i}]`, description: `is ${ids.length} tokens long; the limit is ${limit}` });
      return ids;
    });
    // Checked before any pass: unpooled, a few texts of a wide model are gigabytes.
    const vectors = opts.pooling === "none" ? rows.reduce((n, r) => n + r.length, 0) : rows.length;
    if (opts.maxValues !== undefined && vectors * perVector > opts.maxValues) {
      violations.push({
        field: "texts",
        description: `the response would hold ${vectors} vectors x ${perVector / c.hiddenSize} layers x ${c.hiddenSize} = ${vectors * perVector} numbers, more than the ${opts.maxValues} one call may return: send fewer texts or layers, or pool them (MEAN or LAST_TOKEN)`,
      });
    }
    return violations.length > 0 ? new EmbedRequestError(violations) : rows;
  });
  const states = yield* statesOfRows(loaded, rowsEach.flatMap((r) => (r instanceof EmbedRequestError ? [] : r)), opts);
  let at = 0;
  return rowsEach.map((rows) => (rows instanceof EmbedRequestError ? rows : states.slice(at, (at += rows.length))));
}

/** Hidden states of token rows, in forward passes of at most FORWARD_TOKENS tokens, yielding between them. */
function* statesOfRows(loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">, rows: number[][], opts: StatesOptions): Generator<void, TextStates[], void> {
  const { model } = loaded;
  const d = model.config.hiddenSize;
  const out: TextStates[] = [];
  for (let start = 0; start < rows.length; ) {
    if (start > 0) yield;
    let n = 1;
    let longest = rows[start].length;
    while (start + n < rows.length && (n + 1) * Math.max(longest, rows[start + n].length) <= FORWARD_TOKENS) longest = Math.max(longest, rows[start + n++].length);
    const { ids, mask, lengths } = padded(rows.slice(start, start + n), loaded.tokenizer.padId);
    start += n;
    const t = ids.shape[1];
    const picked = tf.tidy(() => {
      const res = model.states(ids, mask, {
        lora: loaded.adapter,
        returnAttentionOutputs: opts.layers.length > 0,
        returnHidden: opts.final,
        batchInvariant: true,
      });
      return [...opts.layers.map((l) => res.attentionOutputs![l]), ...(opts.final ? [res.hidden!] : [])];
    });
    // Read outside the tidy: a tidy walks what it returns element by element, typed arrays too.
    const arrays = picked.map((x) => x.dataSync() as Float32Array);
    tf.dispose([ids, mask, ...picked]);
    const layerIds = [...opts.layers, ...(opts.final ? [-1] : [])];
    lengths.forEach((length, b) => {
      out.push({
        tokenCount: length,
        layers: layerIds.map((layer, k) => ({ layer, vectors: pool(arrays[k].subarray(b * t * d, (b + 1) * t * d), length, d, opts.pooling) })),
      });
    });
  }
  return out;
}
