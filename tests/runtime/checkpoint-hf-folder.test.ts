import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import { readHfFolder, writeHfFolder } from "../../services/runtime/checkpoint/hf-folder.ts";
import { writeSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../../services/runtime/format-error.ts";

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hf-"));
  dirs.push(dir);
  return dir;
}
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

function ramp(n: number, start: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => start + i / 4);
}

const config = { model_type: "llama", hidden_size: 4, num_hidden_layers: 1, vocab_size: 8 };
const tensors: HostTensors = new Map([
  ["model.embed_tokens.weight", { shape: [8, 4], data: ramp(32, 0) }],
  ["model.layers.0.self_attn.q_proj.weight", { shape: [4, 4], data: ramp(16, 100) }],
  ["model.layers.0.mlp.up_proj.weight", { shape: [6, 4], data: ramp(24, -50) }],
  ["model.norm.weight", { shape: [4], data: ramp(4, 1) }],
]);

function expectSameTensors(got: HostTensors, want: HostTensors): void {
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, tensor] of want) {
    expect(got.get(name)!.shape).toEqual(tensor.shape);
    expect(Array.from(got.get(name)!.data)).toEqual(Array.from(tensor.data));
  }
}

describe("Hugging Face folders", () => {
  it("round-trips a single-file folder with tokenizer and generation files", async () => {
    const src = await tempDir();
    await writeFile(join(src, "tokenizer.json"), JSON.stringify({ model: { type: "BPE" } }));
    await writeFile(join(src, "tokenizer_config.json"), JSON.stringify({ eos_token: "</s>" }));
    const dir = join(await tempDir(), "model");
    const written = await writeHfFolder(dir, {
      config,
      tensors,
      metadata: { format: "pt" },
      generationConfig: { max_new_tokens: 16 },
      copyFiles: [join(src, "tokenizer.json"), join(src, "tokenizer_config.json")],
    });
    expect(written.sort()).toEqual(
      ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
    );
    const folder = await readHfFolder(dir);
    expect(folder.config).toEqual(config);
    expect(folder.metadata).toEqual({ format: "pt" });
    expect(folder.weightFiles).toEqual(["model.safetensors"]);
    expect(folder.tokenizerPath).toBe(join(dir, "tokenizer.json"));
    expect(folder.tokenizerConfig).toEqual({ eos_token: "</s>" });
    expect(folder.generationConfig).toEqual({ max_new_tokens: 16 });
    expectSameTensors(folder.tensors, tensors);
  });

  it("writes and reads a sharded folder with an index", async () => {
    const dir = await tempDir();
    await writeHfFolder(dir, { config, tensors, maxShardBytes: 128 });
    const files = (await readdir(dir)).sort();
    expect(files).toContain("model.safetensors.index.json");
    expect(files).not.toContain("model.safetensors");
    const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8"));
    expect(index.metadata.total_size).toBe((32 + 16 + 24 + 4) * 4);
    const shards = new Set(Object.values(index.weight_map));
    expect(shards.size).toBeGreaterThan(1);
    for (const shard of shards) expect(shard).toMatch(/^model-0000\d-of-0000\d\.safetensors$/);

    const folder = await readHfFolder(dir);
    expect(folder.weightFiles.length).toBe(shards.size);
    expect(folder.tokenizerPath).toBeUndefined();
    expectSameTensors(folder.tensors, tensors);
  });

  describe("refuses inconsistent folders", () => {
    async function sharded(weightMap: Record<string, string>, shardFiles: Record<string, HostTensors>): Promise<string> {
      const dir = await tempDir();
      await writeFile(join(dir, "config.json"), JSON.stringify(config));
      await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: weightMap }));
      for (const [file, content] of Object.entries(shardFiles)) await writeFile(join(dir, file), writeSafetensors(content));
      return dir;
    }
    const a = { shape: [1], data: new Float32Array([1]) };
    const b = { shape: [1], data: new Float32Array([2]) };

    it("without weights", async () => {
      const dir = await tempDir();
      await writeFile(join(dir, "config.json"), "{}");
      await expect(readHfFolder(dir)).rejects.toThrow(/missing model.safetensors or model.safetensors.index.json/);
    });
    it("without or with a broken config.json", async () => {
      const dir = await tempDir();
      await expect(readHfFolder(dir)).rejects.toThrow(/^missing config.json$/);
      await writeFile(join(dir, "config.json"), "[]");
      await expect(readHfFolder(dir)).rejects.toThrow(CheckpointFormatError);
    });
    it("with a missing shard", async () => {
      const dir = await sharded({ a: "s1.safetensors", b: "s2.safetensors" }, { "s1.safetensors": new Map([["a", a]]) });
      await expect(readHfFolder(dir)).rejects.toThrow(/^missing s2.safetensors \(named in model.safetensors.index.json\)$/);
    });
    it("with a tensor in the wrong shard", async () => {
      const dir = await sharded({ a: "s1.safetensors", b: "s1.safetensors" }, {
        "s1.safetensors": new Map([["a", a]]),
        "s2.safetensors": new Map([["b", b]]),
      });
      await expect(readHfFolder(dir)).rejects.toThrow(/tensor "b" is mapped to s1.safetensors but is not in it/);
    });
    it("with a tensor the map does not list", async () => {
      const dir = await sharded({ a: "s1.safetensors" }, { "s1.safetensors": new Map([["a", a], ["b", b]]) });
      await expect(readHfFolder(dir)).rejects.toThrow(/tensor "b" is in s1.safetensors but/);
    });
    it("with a duplicated tensor", async () => {
      const dir = await sharded({ a: "s1.safetensors", b: "s2.safetensors" }, {
        "s1.safetensors": new Map([["a", a]]),
        "s2.safetensors": new Map([["a", a], ["b", b]]),
      });
      await expect(readHfFolder(dir)).rejects.toThrow(/s2.safetensors: tensor "a" appears in more than one shard \(also in s1.safetensors\)/);
    });
    it("with a shard path that leaves the folder", async () => {
      const dir = await sharded({ a: "../evil.safetensors" }, {});
      await expect(readHfFolder(dir)).rejects.toThrow(/not a file name/);
    });
    it("with a corrupt shard, naming the file", async () => {
      const dir = await sharded({ a: "s1.safetensors" }, {});
      await writeFile(join(dir, "s1.safetensors"), "garbage");
      await expect(readHfFolder(dir)).rejects.toThrow(/s1.safetensors: file is 7 bytes/);
    });
  });
});
