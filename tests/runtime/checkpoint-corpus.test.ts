/**
 * The malformed-checkpoint corpus of issue 14 against the loaders: each bad folder (a copy
 * of a fixture with one thing broken) is refused with a CheckpointFormatError that names
 * the file at fault by its name in the folder, says what is wrong, and holds no server path.
 */
import { cp, mkdtemp, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { checkLlamaFolder, checkLlamaTokenizer, readLlamaFolder } from "../../services/runtime/checkpoint/llama-folder.ts";
import { readSafetensors, writeSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../../services/runtime/format-error.ts";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import { KIND } from "../../services/runtime/pipeline/kinds.ts";
import { loadCheckpoint } from "../../services/runtime/pipeline/load.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** A private copy of a fixture folder. */
async function copy(fixture: string): Promise<string> {
  const parent = await mkdtemp(join(tmpdir(), "vaccine-corpus-"));
  dirs.push(parent);
  const dir = join(parent, fixture);
  await cp(join(FIXTURES, fixture), dir, { recursive: true });
  return dir;
}

async function editJson(path: string, edit: (json: Record<string, unknown>) => void): Promise<void> {
  const json = JSON.parse(await readFile(path, "utf8"));
  edit(json);
  await writeFile(path, JSON.stringify(json));
}

async function editTensors(dir: string, edit: (tensors: HostTensors) => void): Promise<void> {
  const path = join(dir, "model.safetensors");
  const { tensors, metadata } = await readSafetensors(path);
  edit(tensors);
  await writeFile(path, writeSafetensors(tensors, metadata));
}

/** The refusal of `read`, checked for type, file, message and the absence of any server path. */
async function refusal(dir: string, read: () => Promise<unknown>, file: string, message: RegExp): Promise<CheckpointFormatError> {
  const err = await read().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "should be refused").toBeInstanceOf(CheckpointFormatError);
  const e = err as CheckpointFormatError;
  expect(e.file).toBe(file);
  expect(e.message).toMatch(message);
  expect(e.message.startsWith(`${file}: `) || e.message.startsWith(`missing ${file}`)).toBe(true);
  expect(e.message).not.toContain(dir);
  expect(e.message).not.toContain(tmpdir());
  return e;
}

describe("Llama folders: the config", () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["a layer count no model has", { num_hidden_layers: 1e9 }, /num_hidden_layers must be an integer in \[1, 1024\], got 1000000000/],
    ["a negative width", { hidden_size: -64 }, /hidden_size must be an integer in/],
    ["a size given as a string", { vocab_size: "512" }, /vocab_size must be an integer in .* got "512"/],
    ["a fractional size", { intermediate_size: 160.5 }, /intermediate_size must be an integer/],
    ["heads that do not divide", { num_key_value_heads: 3 }, /num_attention_heads 4 is not divisible by num_key_value_heads 3/],
    ["an eos id outside the vocabulary", { eos_token_id: 512 }, /eos_token_id must be a token id in \[0, 512\)/],
    ["rope scaling", { rope_scaling: { type: "linear", factor: 2 } }, /rope_scaling is not supported/],
    ["another activation", { hidden_act: "gelu" }, /hidden_act "gelu" is not supported/],
    ["another architecture", { architectures: ["MistralForCausalLM"] }, /architectures \["MistralForCausalLM"\] do not include LlamaForCausalLM/],
    ["an rms eps of 1", { rms_norm_eps: 1 }, /rms_norm_eps must be a positive number below 1/],
  ];
  for (const [what, override, message] of cases) {
    it(`refuses ${what}`, async () => {
      const dir = await copy("llama-f32-gqa");
      await editJson(join(dir, "config.json"), (c) => Object.assign(c, override));
      await refusal(dir, () => readLlamaFolder(dir), "config.json", message);
    });
  }

  it("refuses a config larger than the bytes on disk at once, before any tensor is built", async () => {
    const dir = await copy("llama-f32-gqa");
    // Within every bound, and 500 times the weights the file holds.
    await editJson(join(dir, "config.json"), (c) => Object.assign(c, { num_hidden_layers: 1000 }));
    const started = Date.now();
    await refusal(dir, () => readLlamaFolder(dir), "config.json", /describes \d+ weights \(\d+ bytes even in 16 bits\), the weight files hold 607488 bytes/);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it("refuses a missing, unreadable or non-object config.json", async () => {
    const dir = await copy("llama-f32-gqa");
    await writeFile(join(dir, "config.json"), "{ not json");
    await refusal(dir, () => readLlamaFolder(dir), "config.json", /not valid JSON/);
    await writeFile(join(dir, "config.json"), "[]");
    await refusal(dir, () => readLlamaFolder(dir), "config.json", /not a JSON object/);
    await unlink(join(dir, "config.json"));
    await refusal(dir, () => readLlamaFolder(dir), "config.json", /^missing config.json$/);
  });
});

describe("Llama folders: the tensors", () => {
  it("refuses a missing tensor, naming the weight file", async () => {
    const dir = await copy("llama-f32-gqa");
    await editTensors(dir, (t) => t.delete("model.norm.weight"));
    await refusal(dir, () => readLlamaFolder(dir), "model.safetensors", /missing tensor "model.norm.weight" \[64\]/);
  });

  it("refuses an extra tensor", async () => {
    const dir = await copy("llama-f32-gqa");
    await editTensors(dir, (t) => t.set("model.layers.0.self_attn.q_proj.bias", { shape: [64], data: new Float32Array(64) }));
    await refusal(dir, () => readLlamaFolder(dir), "model.safetensors", /unexpected tensor "model.layers.0.self_attn.q_proj.bias"/);
  });

  it("refuses a tensor of the right size but the wrong shape", async () => {
    const dir = await copy("llama-f32-gqa");
    await editTensors(dir, (t) => {
      const q = t.get("model.layers.1.self_attn.q_proj.weight")!;
      t.set("model.layers.1.self_attn.q_proj.weight", { shape: [32, 128], data: q.data });
    });
    await refusal(dir, () => readLlamaFolder(dir), "model.safetensors", /tensor "model.layers.1.self_attn.q_proj.weight" has shape \[32, 128\], config.json implies \[64, 64\]/);
  });

  it("refuses a config that disagrees with the tensors", async () => {
    const dir = await copy("llama-f32-gqa");
    await editJson(join(dir, "config.json"), (c) => Object.assign(c, { intermediate_size: 128 }));
    await refusal(dir, () => readLlamaFolder(dir), "model.safetensors", /tensor "model.layers.0.mlp.gate_proj.weight" has shape \[160, 64\], config.json implies \[128, 64\]/);
  });

  it("refuses a sharded folder with a shard missing, or a tensor the index does not map", async () => {
    const dir = await copy("llama-bf16-sharded-tied");
    await unlink(join(dir, "model-00002-of-00002.safetensors"));
    await refusal(dir, () => readLlamaFolder(dir), "model-00002-of-00002.safetensors", /^missing model-00002-of-00002.safetensors \(named in model.safetensors.index.json\)$/);

    const other = await copy("llama-bf16-sharded-tied");
    await editJson(join(other, "model.safetensors.index.json"), (index) => {
      delete (index.weight_map as Record<string, string>)["model.norm.weight"];
    });
    await refusal(other, () => readLlamaFolder(other), "model-00002-of-00002.safetensors", /tensor "model.norm.weight" is in model-00002-of-00002.safetensors but model.safetensors.index.json maps it to null/);
  });

  it("refuses a corrupt weight file, naming it", async () => {
    const dir = await copy("llama-f32-gqa");
    const path = join(dir, "model.safetensors");
    const bytes = await readFile(path);
    await writeFile(path, Buffer.concat([bytes.subarray(0, 8), Buffer.from(" "), bytes.subarray(8)]));
    await refusal(dir, () => checkLlamaFolder(dir), "model.safetensors", /header must start with "\{"/);
  });
});

describe("Llama folders: the tokenizer", () => {
  const check = async (dir: string) => checkLlamaTokenizer(dir, (await checkLlamaFolder(dir)).config);

  it("accepts the fixtures' tokenizer", async () => {
    const dir = await copy("llama-f32-gqa");
    expect((await check(dir)).eosId).toBe(2);
  });

  it("refuses a missing or malformed tokenizer.json", async () => {
    const dir = await copy("llama-f32-gqa");
    await writeFile(join(dir, "tokenizer.json"), "{");
    await refusal(dir, () => check(dir), "tokenizer.json", /not valid JSON/);
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0" }));
    await refusal(dir, () => check(dir), "tokenizer.json", /not a tokenizer this runtime can load/);
    await unlink(join(dir, "tokenizer.json"));
    await refusal(dir, () => check(dir), "tokenizer.json", /^missing tokenizer.json$/);
    await refusal(dir, () => readLlamaFolder(dir), "tokenizer.json", /^missing tokenizer.json$/);
  });

  it("refuses a tokenizer without an eos token", async () => {
    const dir = await copy("llama-f32-gqa");
    await editJson(join(dir, "tokenizer_config.json"), (c) => delete c.eos_token);
    await editJson(join(dir, "config.json"), (c) => delete c.eos_token_id);
    await refusal(dir, () => check(dir), "tokenizer_config.json", /names no eos token/);
  });

  it("refuses a tokenizer whose ids do not fit the embedding", async () => {
    const dir = await copy("llama-f32-gqa");
    await editJson(join(dir, "tokenizer.json"), (t) => {
      (t.added_tokens as { id: number }[]).push({ id: 600, content: "<extra>", special: true } as never);
    });
    await refusal(dir, () => check(dir), "tokenizer.json", /token ids up to 600, beyond vocab_size 512/);
  });

  it("requires tokenizer_config.json for an import", async () => {
    const dir = await copy("llama-f32-gqa");
    await unlink(join(dir, "tokenizer_config.json"));
    await refusal(dir, () => check(dir), "tokenizer_config.json", /^missing tokenizer_config.json$/);
  });
});

describe("stored checkpoints", () => {
  let root: string;
  let store: LocalCheckpointStore;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    root = await mkdtemp(join(tmpdir(), "vaccine-corpus-store-"));
    dirs.push(root);
    store = new LocalCheckpointStore(root);
  });

  it("refuses to load a model whose config is out of range, at once", async () => {
    const dir = await copy("llama-f32-gqa");
    await editJson(join(dir, "config.json"), (c) => Object.assign(c, { num_hidden_layers: 1e9 }));
    const ref = await store.put(dir, { kind: KIND.model });
    const started = Date.now();
    await refusal(root, () => loadCheckpoint(store, ref), "config.json", /num_hidden_layers/);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it("loads an adapter whatever its base_model_name_or_path says: the base is the manifest's parent", async () => {
    const parent = await store.put(join(FIXTURES, "llama-f32-gqa"), { kind: KIND.model });
    for (const base of ["../../../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "s3://another-bucket/model"]) {
      const dir = await copy("adapter-f32-gqa");
      await editJson(join(dir, "adapter_config.json"), (c) => Object.assign(c, { base_model_name_or_path: base }));
      const ref = await store.put(dir, { kind: KIND.adapter, meta: { parent } });
      const loaded = await loadCheckpoint(store, ref);
      try {
        expect(loaded.lineage).toEqual([parent, ref]);
        expect(loaded.adapter?.pairs.size).toBe(14);
      } finally {
        loaded.dispose();
      }
    }
  });

  it("refuses an adapter with an unknown target module", async () => {
    const parent = await store.put(join(FIXTURES, "llama-f32-gqa"), { kind: KIND.model });
    const dir = await copy("adapter-f32-gqa");
    await editJson(join(dir, "adapter_config.json"), (c) => Object.assign(c, { target_modules: ["q_proj", "lm_head"] }));
    const ref = await store.put(dir, { kind: KIND.adapter, meta: { parent } });
    await refusal(root, () => loadCheckpoint(store, ref), "adapter_config.json", /target_modules names unknown modules \["lm_head"\]/);
  });
});
