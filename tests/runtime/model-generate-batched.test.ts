// Batched decoding (model/generate.ts, model/kv-cache.ts): prompts of different
// lengths decoded together give, token for token, what decoding each alone gives; on the
// stock wasm kernels a row's logits are even bitwise those of the row alone.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { loadBaseModel, type LoadedModel } from "../../services/runtime/base-model.ts";
import { loadBuiltin } from "../../services/runtime/data/builtin.ts";
import { generate } from "../../services/runtime/model/generate.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { promptIds } from "../../services/runtime/pipeline/answers.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";

/** Prompts of 1 to 12 tokens, and two that leave few positions (max_position_embeddings 24): budgets differ per row. */
const PROMPTS = [
  ...[5, 1, 12, 3, 8, 2, 7].map((n, i) => randomIds(1, n, 50, 40 + i)[0]),
  randomIds(1, 21, 50, 60)[0], // 3 positions left
  randomIds(1, 24, 50, 61)[0], // none left: no token
];

/** Next-token logits of each sequence by a full forward pass without a cache (positions and masks of their own). */
function lastLogits(model: LlamaModel, rows: number[][]): Float32Array[] {
  return tf.tidy(() => {
    const { ids, mask } = batchOf(rows);
    const logits = model.forward(ids, mask, { logitsAt: rows.map((r) => r.length - 1) }).logits.dataSync() as Float32Array;
    const v = logits.length / rows.length;
    return rows.map((_, b) => logits.slice(b * v, (b + 1) * v));
  });
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

describe("batched generation on a tiny model", () => {
  let model: LlamaModel;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    model = tinyModel(5, { max_position_embeddings: 24 }, 1.0); // peaky logits: no near-ties
  });
  afterAll(() => model.dispose());

  it("gives one-by-one's tokens for mixed lengths, per-row budgets and eos, at every batch size", () => {
    const open = generate(model, PROMPTS, { maxNewTokens: 10, eosTokenId: [], batchSize: 1 });
    expect(open.map((o) => o.length)).toEqual([10, 10, 10, 10, 10, 10, 10, 3, 0]);
    // A stop token that ends some rows early and not others.
    const eos = open[0][4];
    const alone = generate(model, PROMPTS, { maxNewTokens: 10, eosTokenId: eos, batchSize: 1 });
    expect(alone[0]).toEqual(open[0].slice(0, open[0].indexOf(eos)));
    expect(alone.some((o, i) => o.length === open[i].length && i < 7)).toBe(true);
    for (const batchSize of [2, 3, 32]) {
      expect(generate(model, PROMPTS, { maxNewTokens: 10, eosTokenId: eos, batchSize })).toEqual(alone);
      expect(generate(model, PROMPTS, { maxNewTokens: 10, eosTokenId: [], batchSize })).toEqual(open);
    }
  });

  it("decodes each row at its own positions: every token is the argmax of a full forward pass without the cache", () => {
    const out = generate(model, PROMPTS, { maxNewTokens: 6, eosTokenId: [], batchSize: 32 });
    for (let step = 0; step < 6; step++) {
      const rows = PROMPTS.map((p, i) => ({ seq: [...p, ...out[i].slice(0, step)], next: out[i][step] })).filter((r) => r.next !== undefined);
      lastLogits(model, rows.map((r) => r.seq)).forEach((l, i) => expect(argmax(l)).toBe(rows[i].next));
    }
  });

  it("samples the same text for a prompt whatever it is batched with, from the seed", () => {
    const opts = { maxNewTokens: 10, temperature: 1.5, topP: 0.9, seed: 7, eosTokenId: [] };
    const alone = generate(model, PROMPTS, { ...opts, batchSize: 1 });
    expect(generate(model, PROMPTS, { ...opts, batchSize: 4 })).toEqual(alone);
    expect(generate(model, PROMPTS.slice(0, 3), { ...opts, batchSize: 4 })).toEqual(alone.slice(0, 3));
    expect(generate(model, PROMPTS, { ...opts, seed: 8, batchSize: 4 })).not.toEqual(alone);
  });

  it("leaves no tensor behind, whether it ends or is aborted", async () => {
    generate(model, PROMPTS, { maxNewTokens: 4, eosTokenId: [] });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) generate(model, PROMPTS, { maxNewTokens: 8, eosTokenId: [] });
    expect(tf.memory().numTensors).toBe(before);
    const controller = new AbortController();
    const run = generate(model, PROMPTS, { maxNewTokens: 20, eosTokenId: [], signal: controller.signal });
    setImmediate(() => setImmediate(() => controller.abort(new Error("stop"))));
    await expect(run).rejects.toThrow("stop");
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe("on the stock wasm kernels, a batched row's logits are bitwise the row's alone", () => {
  let model: LlamaModel;
  beforeAll(async () => {
    // OpenBLAS (the native kernels) picks its sgemm kernel by size, so there a row's
    // products depend on how many rows share them, by float rounding.
    await selectBackend("wasm", () => {}, { nativeKernels: "off" });
    model = tinyModel(3, { max_position_embeddings: 64 }, 0.2);
  });
  afterAll(async () => {
    model.dispose();
    await selectBackend("wasm", () => {}, { nativeKernels: "auto" });
  });

  /** Next-token logits of each prompt after a prefill and `steps` one-token steps fed the given tokens, through one cache. */
  function cachedLogits(prompts: number[][], feed: number[][]): Float32Array[] {
    const cache = model.createCache();
    try {
      let out: Float32Array[] = [];
      let inputs = prompts;
      for (let step = 0; step <= feed[0].length; step++) {
        out = tf.tidy(() => {
          const { ids, mask } = batchOf(inputs);
          const logits = model.forward(ids, mask, { cache, logitsAt: inputs.map((r) => r.length - 1) }).logits.dataSync() as Float32Array;
          const v = logits.length / inputs.length;
          return inputs.map((_, b) => logits.slice(b * v, (b + 1) * v));
        });
        inputs = feed.map((f) => [f[step]]);
      }
      return out;
    } finally {
      cache.dispose();
    }
  }

  it("after a padded prefill and 20 steps with rows at different positions", () => {
    const prompts = [3, 17, 9, 1].map((n, i) => randomIds(1, n, 50, 80 + i)[0]);
    const feed = randomIds(4, 20, 50, 90);
    const batched = cachedLogits(prompts, feed);
    prompts.forEach((p, i) => expect(batched[i]).toEqual(cachedLogits([p], [feed[i]])[0]));
  });
});

describe("batched generation on the shipped base model", () => {
  let base: LoadedModel;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    base = await loadBaseModel();
  });
  afterAll(() => base.model.dispose());

  it("answers harmful prompts token for token as one-by-one decoding does", () => {
    const data = loadBuiltin("harmful-eval", { split: "test", size: 12, seed: 0 });
    if (data.kind !== "examples") throw new Error("harmful-eval is instruction data");
    const prompts = data.examples.map((e) => promptIds(base, e));
    expect(new Set(prompts.map((p) => p.length)).size).toBeGreaterThan(3);
    const opts = { maxNewTokens: 128, eosTokenId: base.tokenizer.eosId! };
    const alone = generate(base.model, prompts, { ...opts, batchSize: 1 });
    expect(alone.every((o) => o.length > 10)).toBe(true);
    expect(generate(base.model, prompts, { ...opts, batchSize: 12 })).toEqual(alone);
    expect(generate(base.model, prompts, { ...opts, batchSize: 5 })).toEqual(alone);
  });
});
