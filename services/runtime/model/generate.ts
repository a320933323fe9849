/**
 * Autoregressive decoding with the KV cache: greedy, or temperature / top-p sampling driven
 * by seeded Rngs, one per prompt, so a seed fixes every prompt's output whatever it is
 * batched with.
 *
 * Prompts are decoded in batches: sorted by length, right-padded for one prefill, then one
 * token per row per step, each row at its own positions (kv-cache.ts); a row that ends
 * leaves the batch. A row's keys sit where they would if it were decoded alone, its padding
 * only trails, and the cached attention's sums do not change with trailing zeros, so its
 * logits are bitwise those of decoding it alone wherever the matrix products do not depend
 * on the number of rows (the wasm kernels; OpenBLAS picks a kernel by size, which moves
 * logits by float rounding only).
 */
import * as tf from "@tensorflow/tfjs";
import { runSteps, runStepsServed } from "../next-turn.ts";
import { Rng } from "../rng.ts";
import type { LlamaModel } from "./llama.ts";
import type { LoraAdapter } from "./lora.ts";

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 (the default) is greedy decoding. */
  temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP. */
  topP?: number;
  seed?: number;
  /** Stop tokens; defaults to the model config's eos_token_id. */
  eosTokenId?: number | number[];
  lora?: LoraAdapter;
  /** Prompts decoded together, at most (default DEFAULT_BATCH); 1 decodes them one at a time. */
  batchSize?: number;
}

/** Options of the asynchronous form: decoding stops between tokens once the signal aborts. */
export interface AbortableGenerateOptions extends GenerateOptions {
  signal: AbortSignal;
}

/** Prompts per batch unless the caller says otherwise: where the built-in model's prompts/s levels off. */
export const DEFAULT_BATCH = 32;

/**
 * Bytes of KV cache one batch may hold (rows x (longest prompt + new tokens) x the model's
 * keys and values per token): a large model decodes fewer prompts at once.
 */
export const CACHE_BUDGET_BYTES = 256 * 1024 * 1024;

/** Generated token ids per prompt, excluding the prompt and the stop token. */
/** New tokens a prompt of this length may get: the caller's limit, or fewer where the model's positions run out. */
export function tokenBudget(model: LlamaModel, promptLength: number, maxNewTokens: number): number {
  return Math.min(maxNewTokens, model.config.maxPositionEmbeddings - promptLength);
}

export function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions & { signal?: undefined }): number[][];
/**
 * With a signal: the same ids, asynchronously. Decoding is synchronous tfjs work, so before
 * every step (a prefill or one token per row) it hands the event loop back (timers such as
 * an RPC deadline, and socket events such as a client's cancellation, get to run), then
 * checks the signal: once it has aborted, no further step is computed, the KV cache is freed
 * and the promise rejects with the signal's reason.
 */
export function generate(model: LlamaModel, prompts: number[][], opts: AbortableGenerateOptions): Promise<number[][]>;
export function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions & { signal?: AbortSignal }): number[][] | Promise<number[][]> {
  // Stopped between steps, the decoder's finally frees the KV cache.
  return opts.signal ? runStepsServed(decode(model, prompts, opts), opts.signal) : runSteps(decode(model, prompts, opts));
}

/** Checks the options, then decodes every prompt, yielding before each forward pass (where a caller may stop it). */
function* decode(model: LlamaModel, prompts: number[][], opts: GenerateOptions): Generator<void, number[][], void> {
  const c = model.config;
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  const batchSize = opts.batchSize ?? DEFAULT_BATCH;
  if (temperature < 0) throw new Error(`temperature must be >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`topP must be in (0, 1], got ${topP}`);
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  if (prompts.some((p) => p.length === 0)) throw new Error("generate: empty prompt");
  const eos = opts.eosTokenId ?? c.eosTokenId;
  const stop = new Set(eos === undefined ? [] : Array.isArray(eos) ? eos : [eos]);
  const budgets = prompts.map((p) => tokenBudget(model, p.length, opts.maxNewTokens));
  const outs = prompts.map((): number[] => []);
  const rngs = prompts.map((_, i) => Rng.derive(opts.seed ?? 0, `generate:${i}`));
  /** The next token of each row (prompt indices) from its logits [rows, 1, vocab]. */
  const pick = (rows: number[], logits: tf.Tensor3D): number[] => {
    // Greedy reads back one id per row rather than every logit.
    if (temperature === 0) {
      const ids = logits.argMax(-1);
      const tokens = Array.from(ids.dataSync());
      ids.dispose();
      return tokens;
    }
    const data = logits.dataSync() as Float32Array;
    const vocab = logits.shape[2];
    return rows.map((i, b) => sampleTopP(data.subarray(b * vocab, (b + 1) * vocab), temperature, topP, rngs[i]));
  };

  const bytesPerToken = 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 4;
  // Similar lengths together: less padding in the prefill and fewer slots per row.
  const order = prompts.map((_, i) => i).filter((i) => budgets[i] > 0);
  order.sort((a, b) => prompts[a].length - prompts[b].length || a - b);
  for (let at = 0; at < order.length; ) {
    let rows = 1;
    const fits = (n: number) => {
      const longest = order.slice(at, at + n).reduce((m, i) => Math.max(m, prompts[i].length + budgets[i]), 0);
      return n * longest * bytesPerToken <= CACHE_BUDGET_BYTES;
    };
    while (rows < batchSize && at + rows < order.length && fits(rows + 1)) rows++;
    yield* decodeBatch(model, prompts, order.slice(at, at + rows), { budgets, outs, stop, pick, lora: opts.lora });
    at += rows;
  }
  return outs;
}

/** Decodes the prompts `batch` (indices) together into `outs`. */
function* decodeBatch(
  model: LlamaModel,
  prompts: number[][],
  batch: number[],
  s: { budgets: number[]; outs: number[][]; stop: Set<number>; pick: (rows: number[], logits: tf.Tensor3D) => number[]; lora?: LoraAdapter },
): Generator<void, void, void> {
  const cache = model.createCache();
  try {
    let active = batch;
    let inputs = batch.map((i) => prompts[i]);
    while (active.length > 0) {
      yield;
      const t = Math.max(...inputs.map((r) => r.length));
      const logits = tf.tidy(() => {
        const ids = new Int32Array(inputs.length * t);
        const mask = new Int32Array(inputs.length * t);
        inputs.forEach((r, b) => (ids.set(r, b * t), mask.fill(1, b * t, b * t + r.length)));
        const { logits } = model.forward(tf.tensor2d(ids, [inputs.length, t], "int32"), tf.tensor2d(mask, [inputs.length, t], "int32"), {
          cache,
          lora: s.lora,
          logitsAt: t > 1 ? inputs.map((r) => r.length - 1) : undefined,
        });
        return logits;
      });
      const tokens = s.pick(active, logits);
      logits.dispose();
      const going: number[] = [];
      active.forEach((i, b) => {
        const token = tokens[b];
        if (s.stop.has(token)) return;
        s.outs[i].push(token);
        if (s.outs[i].length < s.budgets[i]) going.push(b);
      });
      // A finished row leaves the batch at once: measured on the built-in model, letting
      // finished rows ride along to copy the cache less often saved nothing.
      if (going.length < active.length) cache.keepRows(going);
      active = going.map((b) => active[b]);
      inputs = active.map((i) => [s.outs[i][s.outs[i].length - 1]]);
    }
  } finally {
    cache.dispose();
  }
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Samples from softmax(logits / temperature) restricted to the top-p nucleus (float64 on the host). */
function sampleTopP(logits: Float32Array, temperature: number, topP: number, rng: Rng): number {
  const max = logits[argmax(logits)];
  const probs = Array.from(logits, (l) => Math.exp((l - max) / temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
  const nucleus: number[] = [];
  let mass = 0;
  for (const i of order) {
    nucleus.push(i);
    mass += probs[i] / total;
    if (mass >= topP) break;
  }
  const nucleusMass = nucleus.reduce((a, i) => a + probs[i], 0);
  let u = rng.next() * nucleusMass;
  for (const i of nucleus) {
    u -= probs[i];
    if (u < 0) return i;
  }
  return nucleus[nucleus.length - 1];
}
