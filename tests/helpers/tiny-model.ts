/**
 * Tiny seeded Llama models for tests: small enough that a forward+backward pass takes
 * milliseconds on cpu, with grouped-query attention on so that path is always exercised.
 */
import * as tf from "@tensorflow/tfjs";
import { parseLlamaConfig, type LlamaConfig } from "../../services/runtime/model/config.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { Rng } from "../../services/runtime/rng.ts";

/** vocab 50, hidden 16, 2 layers, 4 heads, 2 kv heads; override any Hugging Face field. */
export function tinyConfig(overrides: Record<string, unknown> = {}): LlamaConfig {
  return parseLlamaConfig({
    vocab_size: 50,
    hidden_size: 16,
    intermediate_size: 32,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 64,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: 0,
    ...overrides,
  });
}

/**
 * A seeded tiny model. Init std is 0.2 by default rather than 0.02, so logits vary
 * visibly between tokens: with 0.02 most comparison tests would pass trivially.
 */
export function tinyModel(seed = 0, overrides: Record<string, unknown> = {}, initStd = 0.2): LlamaModel {
  return LlamaModel.init(tinyConfig(overrides), seed, { initStd });
}

/** Seeded random token ids [b][t] in [3, vocab) (so they avoid pad, bos and eos). */
export function randomIds(b: number, t: number, vocab: number, seed: number): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: b }, () => Array.from({ length: t }, () => 3 + (rng.nextUint32() % (vocab - 3))));
}

/** int32 ids and a float mask (1 real, 0 pad) for rows of possibly different lengths, right padded. */
export function batchOf(rows: number[][], padId = 0): { ids: tf.Tensor2D; mask: tf.Tensor2D } {
  const t = Math.max(...rows.map((r) => r.length));
  const ids = rows.map((r) => [...r, ...new Array<number>(t - r.length).fill(padId)]);
  const mask = rows.map((r) => [...new Array<number>(r.length).fill(1), ...new Array<number>(t - r.length).fill(0)]);
  return { ids: tf.tensor2d(ids, [rows.length, t], "int32"), mask: tf.tensor2d(mask, [rows.length, t], "float32") };
}
