import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { generate } from "../../services/runtime/model/generate.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";

describe("generate", () => {
  let model: LlamaModel;
  const prompts = [randomIds(1, 5, 50, 31)[0], randomIds(1, 2, 50, 32)[0]];
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    model = tinyModel(5, {}, 1.0); // peaky logits, so sampling and greedy differ visibly
  });
  afterAll(() => model.dispose());

  it("greedy decoding is deterministic and matches argmax of the full forward pass", () => {
    const before = tf.memory().numTensors;
    const a = generate(model, prompts, { maxNewTokens: 6, eosTokenId: [] });
    expect(tf.memory().numTensors).toBe(before);
    expect(generate(model, prompts, { maxNewTokens: 6, eosTokenId: [] })).toEqual(a);
    expect(a.map((x) => x.length)).toEqual([6, 6]);
    // Re-derive each token without the cache.
    a.forEach((out, i) => {
      const seq = [...prompts[i]];
      for (const token of out) {
        const next = tf.tidy(() => {
          const { ids, mask } = batchOf([seq]);
          return model.forward(ids, mask).logits.slice([0, seq.length - 1, 0], [1, 1, -1]).argMax(-1).dataSync()[0];
        });
        expect(token).toBe(next);
        seq.push(token);
      }
    });
  });

  it("sampling is reproducible with a seed and differs across seeds", () => {
    const opts = { maxNewTokens: 12, temperature: 1.5, topP: 0.95, eosTokenId: [] };
    const s1 = generate(model, prompts, { ...opts, seed: 1 });
    expect(generate(model, prompts, { ...opts, seed: 1 })).toEqual(s1);
    const others = [2, 3, 4].map((seed) => generate(model, prompts, { ...opts, seed }));
    expect(others.some((o) => JSON.stringify(o) !== JSON.stringify(s1))).toBe(true);
  });

  it("a tiny top-p keeps only the most likely token, i.e. greedy", () => {
    const greedy = generate(model, prompts, { maxNewTokens: 5, eosTokenId: [] });
    expect(generate(model, prompts, { maxNewTokens: 5, temperature: 1, topP: 1e-6, seed: 9, eosTokenId: [] })).toEqual(greedy);
  });

  it("stops at eos (not included) and at maxNewTokens", () => {
    const greedy = generate(model, [prompts[0]], { maxNewTokens: 6, eosTokenId: [] })[0];
    const stopAt = greedy[3];
    const cut = generate(model, [prompts[0]], { maxNewTokens: 6, eosTokenId: stopAt })[0];
    expect(cut).toEqual(greedy.slice(0, greedy.indexOf(stopAt)));
    expect(generate(model, [prompts[0]], { maxNewTokens: 2, eosTokenId: [] })[0]).toEqual(greedy.slice(0, 2));
  });
});
