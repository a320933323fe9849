/**
 * Autoregressive decoding with the KV cache: greedy, or temperature / top-p sampling
 * driven by the seeded Rng so a seed fixes the output. Prompts are decoded one at a time,
 * which keeps positions and padding trivially right for prompts of different lengths.
 */
import * as tf from "@tensorflow/tfjs";
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
}

/** Options of the asynchronous form: decoding stops between tokens once the signal aborts. */
export interface AbortableGenerateOptions extends GenerateOptions {
  signal: AbortSignal;
}

/** Generated token ids per prompt, excluding the prompt and the stop token. */
export function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions & { signal?: undefined }): number[][];
/**
 * With a signal: the same ids, asynchronously. Decoding is synchronous tfjs work, so before
 * every token it hands the event loop back (timers such as an RPC deadline, and socket events
 * such as a client's cancellation, get to run), then checks the signal: once it has aborted,
 * no further token is computed, the KV cache is freed and the promise rejects with the
 * signal's reason.
 */
export function generate(model: LlamaModel, prompts: number[][], opts: AbortableGenerateOptions): Promise<number[][]>;
export function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions & { signal?: AbortSignal }): number[][] | Promise<number[][]> {
  if (opts.signal) return generateAbortable(model, prompts, opts, opts.signal);
  const decode = decoder(model, opts);
  return prompts.map((prompt) => {
    const steps = decode(prompt);
    for (;;) {
      const r = steps.next();
      if (r.done) return r.value;
    }
  });
}

async function generateAbortable(model: LlamaModel, prompts: number[][], opts: GenerateOptions, signal: AbortSignal): Promise<number[][]> {
  const decode = decoder(model, opts);
  const out: number[][] = [];
  for (const prompt of prompts) {
    const steps = decode(prompt);
    try {
      for (;;) {
        await nextTurn();
        signal.throwIfAborted();
        const r = steps.next();
        if (r.done) {
          out.push(r.value);
          break;
        }
      }
    } finally {
      // Stopped between tokens: runs the decoder's finally, which frees the KV cache.
      steps.return([]);
    }
  }
  return out;
}

/** Resolves on the next turn of the event loop, after pending timers and I/O callbacks. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Checks the options once; then, per prompt, a decoding that yields before each new token
 * (where a caller may stop it) and returns the generated ids. Prompts share the Rng, so they
 * must be decoded in order, each to its end.
 */
function decoder(model: LlamaModel, opts: GenerateOptions): (prompt: number[]) => Generator<void, number[], void> {
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  if (temperature < 0) throw new Error(`temperature must be >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`topP must be in (0, 1], got ${topP}`);
  const eos = opts.eosTokenId ?? model.config.eosTokenId;
  const stop = new Set(eos === undefined ? [] : Array.isArray(eos) ? eos : [eos]);
  const rng = new Rng(opts.seed ?? 0);
  const pick = (logits: Float32Array): number =>
    temperature === 0 ? argmax(logits) : sampleTopP(logits, temperature, topP, rng);

  return function* decode(prompt) {
    if (prompt.length === 0) throw new Error("generate: empty prompt");
    const budget = Math.min(opts.maxNewTokens, model.config.maxPositionEmbeddings - prompt.length);
    const out: number[] = [];
    const cache = model.createCache();
    try {
      let input = prompt;
      for (let step = 0; step < budget; step++) {
        yield;
        const last = tf.tidy(() => {
          const ids = tf.tensor2d([input], [1, input.length], "int32");
          const { logits } = model.forward(ids, tf.onesLike(ids), { cache, lora: opts.lora });
          return logits.slice([0, input.length - 1, 0], [1, 1, -1]).reshape([-1]);
        });
        const token = pick(last.dataSync() as Float32Array);
        last.dispose();
        if (stop.has(token)) break;
        out.push(token);
        input = [token];
      }
    } finally {
      cache.dispose();
    }
    return out;
  };
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
