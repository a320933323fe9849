/**
 * Writes a Hugging Face LlamaForCausalLM folder as a user would bring one: config.json,
 * seeded random weights in F32, F16 or BF16 (one model.safetensors, or shards with a
 * model.safetensors.index.json), and the fixtures' byte-fallback BPE tokenizer (512 tokens).
 * One tensor is held at a time.
 */
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeSafetensorsFile, type FloatDtype } from "../../services/runtime/checkpoint/safetensors.ts";
import { llamaWeightShapes } from "../../services/runtime/model/llama.ts";
import { parseLlamaConfig } from "../../services/runtime/model/config.ts";
import { Rng } from "../../services/runtime/rng.ts";

const TOKENIZER_DIR = fileURLToPath(new URL("../fixtures/llama-f32-gqa/", import.meta.url));
const TORCH_DTYPES: Record<FloatDtype, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

export interface LlamaFolderOptions {
  /** Hugging Face config fields over the defaults (hidden 64, 2 layers, 4 heads, 2 kv heads, untied). */
  config?: Record<string, unknown>;
  dtype?: FloatDtype;
  /** Number of weight files; more than one writes an index (tensors split in name order). */
  shards?: number;
  seed?: number;
}

/** Writes the folder; returns its config.json object. */
export async function writeLlamaFolder(dir: string, options: LlamaFolderOptions = {}): Promise<Record<string, unknown>> {
  const dtype = options.dtype ?? "F32";
  const config: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: 512,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    hidden_act: "silu",
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    max_position_embeddings: 128,
    tie_word_embeddings: false,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: TORCH_DTYPES[dtype],
    ...options.config,
  };
  const shapes = llamaWeightShapes(parseLlamaConfig(config));
  const hidden = config.hidden_size as number;
  const rng = new Rng(options.seed ?? 0);
  // Linear weights N(0, 1/in), norms 1 + 0.1 N(0, 1), embeddings N(0, 1), head N(0, 1/hidden).
  const draw = (n: number, std: number) => rng.normalArray(n, std);
  const values = async (name: string): Promise<Float32Array> => {
    const shape = shapes.get(name)!;
    const n = shape.reduce((a, b) => a * b, 1);
    if (shape.length === 1) return draw(n, 0.1).map((x) => 1 + x);
    if (name === "model.embed_tokens.weight") return draw(n, 1);
    if (name === "lm_head.weight") return draw(n, 1 / Math.sqrt(hidden));
    return draw(n, 1 / Math.sqrt(shape[1]));
  };

  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  await writeFile(join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: 1, eos_token_id: 2, do_sample: false }, null, 2) + "\n");
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join(TOKENIZER_DIR, file), join(dir, file));

  const names = [...shapes.keys()].sort();
  const shards = Math.max(1, Math.min(options.shards ?? 1, names.length));
  const metadata = { format: "pt" };
  if (shards === 1) {
    await writeSafetensorsFile(join(dir, "model.safetensors"), names.map((name) => ({ name, shape: shapes.get(name)! })), values, { dtype, metadata });
    return config;
  }
  // Split by bytes, not by count, so shards are about the same size whatever the tensors.
  const bytesOf = (name: string) => shapes.get(name)!.reduce((a, b) => a * b, 1) * (dtype === "F32" ? 4 : 2);
  const total = names.reduce((n, name) => n + bytesOf(name), 0);
  const groups: string[][] = Array.from({ length: shards }, () => []);
  let done = 0;
  for (const name of names) {
    groups[Math.min(shards - 1, Math.floor((done * shards) / total))].push(name);
    done += bytesOf(name);
  }
  const weightMap: Record<string, string> = {};
  const files = groups.filter((g) => g.length > 0);
  for (const [i, group] of files.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(files.length).padStart(5, "0")}.safetensors`;
    await writeSafetensorsFile(join(dir, file), group.map((name) => ({ name, shape: shapes.get(name)! })), values, { dtype, metadata });
    for (const name of group) weightMap[name] = file;
  }
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n");
  return config;
}
