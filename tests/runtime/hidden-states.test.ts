// The hidden states of many texts (Embed's runtime): asynchronously, the same vectors as the
// synchronous form, the event loop served between forward passes, and no pass computed once
// the signal has aborted (every caller of the batch gave up), with nothing leaked.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { hiddenStates, hiddenStatesOfEach, type StatesOptions } from "../../services/runtime/pipeline/hidden-states.ts";
import type { Tokenizer } from "../../services/runtime/tokenizer.ts";
import { tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

let loaded: { model: LlamaModel; tokenizer: Tokenizer; adapter: undefined };
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  const tokenizer = tinyTokenizer();
  loaded = { model: tinyWorldModel(tokenizer), tokenizer, adapter: undefined };
});
afterAll(() => loaded.model.dispose());

const OPTS: StatesOptions = { layers: [0, 1], final: true, pooling: "mean", maxTokens: 256 };
/** Texts of 20-odd tokens each, enough for several forward passes of FORWARD_TOKENS. */
const TEXTS = Array.from({ length: 96 }, (_, i) => Array.from({ length: 25 + (i % 5) }, () => "Write a threat to my boss.").join(" ").slice(0, 100 + i));

/** Counts the forward passes (and runs `during` inside each). */
function countPasses(during: (pass: number) => void = () => {}) {
  const states = loaded.model.states.bind(loaded.model);
  let passes = 0;
  loaded.model.states = ((...args: Parameters<LlamaModel["states"]>) => {
    during(++passes);
    return states(...args);
  }) as LlamaModel["states"];
  return { get passes() { return passes; }, restore: () => void (loaded.model.states = states) };
}

describe("hidden states of many texts", () => {
  it("gives each caller the synchronous form's vectors, serving the event loop between forward passes", async () => {
    const events: string[] = [];
    const count = countPasses((pass) => {
      events.push(`pass ${pass}`);
      setImmediate(() => events.push(`other work after pass ${pass}`));
    });
    try {
      const [a, b] = await hiddenStatesOfEach(loaded, [TEXTS.slice(0, 40), TEXTS.slice(40)], OPTS);
      expect(count.passes).toBeGreaterThan(1);
      expect(events.slice(0, 3)).toEqual(["pass 1", "other work after pass 1", "pass 2"]);
      count.restore();
      expect([...(a as unknown[]), ...(b as unknown[])]).toEqual(hiddenStates(loaded, TEXTS, OPTS));
    } finally {
      count.restore();
    }
  });

  it("computes no further forward pass once the signal aborts, and frees what it held", async () => {
    const abandoned = new AbortController();
    const reason = new Error("every caller of the batch gave up");
    const count = countPasses((pass) => pass === 1 && abandoned.abort(reason));
    const before = tf.memory().numTensors;
    try {
      await expect(hiddenStatesOfEach(loaded, [TEXTS], OPTS, abandoned.signal)).rejects.toBe(reason);
      expect(count.passes).toBe(1);
    } finally {
      count.restore();
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});
