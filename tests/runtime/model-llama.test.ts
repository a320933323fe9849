import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { parseLlamaConfig } from "../../services/runtime/model/config.ts";
import { LlamaModel, applyRotary, rmsNorm } from "../../services/runtime/model/llama.ts";
import { batchOf, randomIds, tinyConfig, tinyModel } from "../helpers/tiny-model.ts";

function logitsOf(model: LlamaModel, rows: number[][]): number[][][] {
  return tf.tidy(() => {
    const { ids, mask } = batchOf(rows);
    return model.forward(ids, mask).logits.arraySync();
  });
}

function maxAbsDiff(a: number[] | Float32Array, b: number[] | Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("LlamaConfig", () => {
  it("applies Hugging Face defaults", () => {
    const c = parseLlamaConfig({
      vocab_size: 10, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1,
      num_attention_heads: 2, max_position_embeddings: 32,
    });
    expect(c).toMatchObject({ numKeyValueHeads: 2, ropeTheta: 10000, tieWordEmbeddings: false, headDim: 4, rmsNormEps: 1e-6 });
  });

  it("names the field at fault", () => {
    expect(() => tinyConfig({ hidden_size: 18 })).toThrow(/hidden_size 18 is not divisible by num_attention_heads 4/);
    expect(() => tinyConfig({ num_key_value_heads: 3 })).toThrow(/num_attention_heads 4 is not divisible by num_key_value_heads 3/);
    expect(() => tinyConfig({ vocab_size: undefined })).toThrow(/vocab_size is missing/);
    expect(() => tinyConfig({ num_hidden_layers: 1.5 })).toThrow(/num_hidden_layers must be an integer in \[1, 1024\]/);
    expect(() => tinyConfig({ eos_token_id: 99 })).toThrow(/eos_token_id must be a token id in \[0, 50\)/);
  });
});

describe("RoPE and RMSNorm known answers", () => {
  beforeAll(async () => {
    await selectBackend("cpu", () => {});
  });

  it("rotates the two halves of each head (rotate_half), not interleaved pairs", () => {
    // head_dim 4 at position 1: inv_freq = [1, 1/100], so angles [1, 0.01] apply to the
    // pairs (x0, x2) and (x1, x3); an interleaved convention would pair (x0, x1).
    const out = tf.tidy(() => applyRotary(tf.tensor4d([1, 2, 3, 4, 1, 2, 3, 4], [1, 1, 2, 4]), 0, 10000).arraySync());
    const c1 = Math.cos(1), s1 = Math.sin(1), c2 = Math.cos(0.01), s2 = Math.sin(0.01);
    expect(maxAbsDiff(out[0][0][0], [1, 2, 3, 4])).toBeLessThan(1e-6); // position 0: identity
    const expected = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2];
    expect(maxAbsDiff(out[0][0][1], expected)).toBeLessThan(1e-6);
    // A cache offset shifts positions: position 1 of the sequence at offset 0 equals position 0 at offset 1.
    const shifted = tf.tidy(() => applyRotary(tf.tensor4d([1, 2, 3, 4], [1, 1, 1, 4]), 1, 10000).arraySync());
    expect(maxAbsDiff(shifted[0][0][0], expected)).toBeLessThan(1e-6);
  });

  it("normalises by the root mean square, then scales", () => {
    const out = tf.tidy(() => rmsNorm(tf.tensor2d([[3, 4]]), tf.tensor1d([1, 2]), 0).arraySync());
    const rms = Math.sqrt((9 + 16) / 2);
    expect(maxAbsDiff(out[0], [3 / rms, (2 * 4) / rms])).toBeLessThan(1e-6);
  });
});

describe.each(["cpu", "wasm"])("LlamaModel on %s", (backend) => {
  let model: LlamaModel;
  beforeAll(async () => {
    await selectBackend(backend, () => {});
    model = tinyModel(1);
  });
  afterAll(() => model.dispose());

  it("returns logits [B, T, V] and optional attention outputs and hidden states", () => {
    tf.tidy(() => {
      const { ids, mask } = batchOf(randomIds(2, 5, 50, 1));
      const r = model.forward(ids, mask, { returnAttentionOutputs: true, returnHidden: true });
      expect(r.logits.shape).toEqual([2, 5, 50]);
      expect(r.attentionOutputs!.map((a) => a.shape)).toEqual([[2, 5, 16], [2, 5, 16]]);
      expect(r.hidden!.shape).toEqual([2, 5, 16]);
    });
  });

  it("states() gives forward()'s hidden states, bitwise, without computing the LM head", () => {
    const { ids, mask } = batchOf(randomIds(3, 6, 50, 4));
    const full = model.forward(ids, mask, { returnAttentionOutputs: true, returnHidden: true });
    const before = tf.memory().numTensors;
    const states = model.states(ids, mask, { returnAttentionOutputs: true, returnHidden: true });
    expect("logits" in states).toBe(false);
    expect(tf.memory().numTensors - before, "two attention outputs and the hidden state, nothing else").toBe(3);
    expect(states.hidden!.dataSync()).toEqual(full.hidden!.dataSync());
    full.attentionOutputs!.forEach((a, l) => expect(states.attentionOutputs![l].dataSync()).toEqual(a.dataSync()));
    const only = model.states(ids, mask, { returnAttentionOutputs: true });
    expect(only.hidden).toBeUndefined();
    tf.dispose([full.logits, full.hidden!, ...full.attentionOutputs!, states.hidden!, ...states.attentionOutputs!, ...only.attentionOutputs!, ids, mask]);
  });

  it("is causal: changing a later token leaves earlier logits unchanged", () => {
    const a = randomIds(1, 8, 50, 2)[0];
    const b = [...a];
    b[5] = a[5] === 10 ? 11 : 10;
    const la = logitsOf(model, [a])[0];
    const lb = logitsOf(model, [b])[0];
    for (let t = 0; t < 5; t++) expect(maxAbsDiff(la[t], lb[t])).toBeLessThan(1e-6);
    expect(maxAbsDiff(la[5], lb[5])).toBeGreaterThan(1e-3);
  });

  it("right padding does not change the real tokens' logits", () => {
    const rows = [randomIds(1, 8, 50, 3)[0], randomIds(1, 5, 50, 4)[0], randomIds(1, 2, 50, 5)[0]];
    const batched = logitsOf(model, rows);
    rows.forEach((row, i) => {
      const alone = logitsOf(model, [row])[0];
      for (let t = 0; t < row.length; t++) expect(maxAbsDiff(batched[i][t], alone[t])).toBeLessThan(1e-5);
    });
  });

  it("a delta on the attention output changes later logits only and zero deltas change nothing", () => {
    tf.tidy(() => {
      const { ids, mask } = batchOf(randomIds(1, 6, 50, 6));
      const base = model.forward(ids, mask).logits;
      const zeros = [0, 1].map(() => tf.zeros([1, 6, 16]));
      expect(maxAbsDiff(model.forward(ids, mask, { deltas: zeros }).logits.dataSync() as Float32Array, base.dataSync() as Float32Array)).toBe(0);
      const at3 = tf.zeros([1, 6, 16]).add(tf.oneHot(tf.tensor1d([3], "int32"), 6).reshape([1, 6, 1]).mul(0.5));
      const perturbed = model.forward(ids, mask, { deltas: [at3, tf.zeros([1, 6, 16])] }).logits.arraySync()[0];
      const plain = base.arraySync()[0];
      for (let t = 0; t < 3; t++) expect(maxAbsDiff(perturbed[t], plain[t])).toBeLessThan(1e-6);
      expect(maxAbsDiff(perturbed[3], plain[3])).toBeGreaterThan(1e-3);
    });
  });

  it("incremental decoding with the KV cache matches the full forward pass", () => {
    const row = randomIds(1, 9, 50, 7)[0];
    const full = logitsOf(model, [row])[0];
    const cache = model.createCache();
    const steps: number[][] = [];
    // A 4-token prefill, then one token at a time.
    const chunks = [row.slice(0, 4), ...row.slice(4).map((x) => [x])];
    for (const chunk of chunks) {
      const l = tf.tidy(() => {
        const ids = tf.tensor2d([chunk], [1, chunk.length], "int32");
        return model.forward(ids, tf.onesLike(ids), { cache }).logits.arraySync()[0];
      });
      steps.push(...l);
    }
    expect(cache.length).toBe(9);
    cache.dispose();
    steps.forEach((l, t) => expect(maxAbsDiff(l, full[t])).toBeLessThan(1e-5));
  });

  it("exportWeights -> fromWeights gives identical logits (untied and tied)", () => {
    for (const m of [model, tinyModel(2, { tie_word_embeddings: true })]) {
      const copy = LlamaModel.fromWeights(m.config, m.exportWeights());
      const rows = randomIds(2, 4, 50, 8);
      expect(logitsOf(copy, rows)).toEqual(logitsOf(m, rows));
      copy.dispose();
      if (m !== model) {
        expect(m.exportWeights().has("lm_head.weight")).toBe(false);
        m.dispose();
      }
    }
  });

  it("fromWeights reports missing, mis-shaped and unexpected tensors by name", () => {
    const w = model.exportWeights();
    w.delete("model.norm.weight");
    w.set("model.layers.0.self_attn.k_proj.weight", { shape: [16, 16], data: new Float32Array(256) });
    w.set("model.layers.9.mlp.up_proj.weight", { shape: [1], data: new Float32Array(1) });
    const err = (() => {
      try {
        LlamaModel.fromWeights(model.config, w);
      } catch (e) {
        return String(e);
      }
      return "";
    })();
    expect(err).toMatch(/missing model\.norm\.weight \[16\]/);
    expect(err).toMatch(/model\.layers\.0\.self_attn\.k_proj\.weight has shape \[16, 16\], expected \[8, 16\]/);
    expect(err).toMatch(/unexpected model\.layers\.9\.mlp\.up_proj\.weight/);
  });

  it("leaves behind only the tensors it returns", () => {
    const { ids, mask } = batchOf(randomIds(2, 4, 50, 9));
    const before = tf.memory().numTensors;
    const r = model.forward(ids, mask, { returnAttentionOutputs: true, returnHidden: true });
    expect(tf.memory().numTensors - before).toBe(1 + 2 + 1);
    tf.dispose([r.logits, r.hidden!, ...r.attentionOutputs!, ids, mask]);
    expect(tf.memory().numTensors).toBe(before - 2);
  });
});
