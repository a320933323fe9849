import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import {
  type LoraPair,
  checkAdapterFits,
  inspectPeftFolder,
  loraAdapterConfig,
  peftTensorName,
  readPeftFolder,
  writePeftFolder,
} from "../../services/runtime/checkpoint/peft-folder.ts";
import { readSafetensors, writeSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../../services/runtime/format-error.ts";
import { parseLlamaConfig } from "../../services/runtime/model/config.ts";

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "peft-"));
  dirs.push(dir);
  return dir;
}
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const r = 2;
const config = loraAdapterConfig({
  base_model_name_or_path: "store://checkpoints/" + "a".repeat(64),
  r,
  lora_alpha: 4,
  target_modules: ["q_proj", "v_proj"],
});
function pair(module: string, inDim: number, outDim: number, seed: number): LoraPair {
  return {
    module,
    a: { shape: [r, inDim], data: Float32Array.from({ length: r * inDim }, (_, i) => seed + i) },
    b: { shape: [outDim, r], data: Float32Array.from({ length: outDim * r }, (_, i) => -seed - i) },
  };
}
const pairs = [
  pair("model.layers.0.self_attn.q_proj", 4, 4, 1),
  pair("model.layers.0.self_attn.v_proj", 4, 2, 100),
  pair("model.layers.1.self_attn.q_proj", 4, 4, 200),
];

async function folderWith(tensors: HostTensors, cfg: Record<string, unknown> = config): Promise<string> {
  const dir = await tempDir();
  await writeFile(join(dir, "adapter_config.json"), JSON.stringify(cfg));
  await writeFile(join(dir, "adapter_model.safetensors"), writeSafetensors(tensors));
  return dir;
}
function tensorsOf(list: LoraPair[]): HostTensors {
  return new Map(list.flatMap((p) => [[peftTensorName(p.module, "A"), p.a], [peftTensorName(p.module, "B"), p.b]]));
}

describe("PEFT adapter folders", () => {
  it("writes PEFT names and config and reads them back", async () => {
    const dir = await tempDir();
    await writePeftFolder(dir, config, pairs);
    const saved = JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8"));
    expect(saved).toMatchObject({ peft_type: "LORA", task_type: "CAUSAL_LM", bias: "none", r: 2, lora_alpha: 4, lora_dropout: 0 });
    const { tensors } = await readSafetensors(join(dir, "adapter_model.safetensors"));
    expect([...tensors.keys()].sort()).toEqual([
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
      "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
      "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
    ]);
    const folder = await readPeftFolder(dir);
    expect(folder.config).toEqual(saved);
    expect(folder.pairs.map((p) => p.module)).toEqual(pairs.map((p) => p.module));
    for (const [i, p] of folder.pairs.entries()) {
      expect(p.a.shape).toEqual(pairs[i].a.shape);
      expect(p.b.shape).toEqual(pairs[i].b.shape);
      expect(Array.from(p.a.data)).toEqual(Array.from(pairs[i].a.data));
      expect(Array.from(p.b.data)).toEqual(Array.from(pairs[i].b.data));
    }
  });

  it("refuses bad config fields", async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ peft_type: "IA3" }, /peft_type is "IA3"/],
      [{ task_type: "SEQ_CLS" }, /task_type/],
      [{ bias: "all" }, /bias is "all"/],
      [{ r: 0 }, /r must be an integer in \[1, 4096\]/],
      [{ r: 1e9 }, /r must be an integer in \[1, 4096\]/],
      [{ lora_alpha: "8" }, /lora_alpha/],
      [{ lora_dropout: 1 }, /lora_dropout/],
      [{ target_modules: ".*proj" }, /target_modules must be a non-empty list/],
      [{ base_model_name_or_path: 7 }, /base_model_name_or_path must be a string or null/],
      [{ target_modules: ["q_proj", "mlp.c_fc"] }, /target_modules names unknown modules \["mlp.c_fc"\]/],
      [{ target_modules: ["q_proj", "q_proj"] }, /repeats/],
      [{ use_rslora: true }, /use_rslora/],
      [{ fan_in_fan_out: true }, /fan_in_fan_out/],
      [{ layers_to_transform: [0] }, /layers_to_transform/],
      [{ rank_pattern: { q_proj: 4 } }, /rank_pattern is not supported/],
      [{ use_dora: true }, /use_dora/],
    ];
    for (const [override, message] of cases) {
      const dir = await folderWith(tensorsOf(pairs), { ...config, ...override });
      const err = await readPeftFolder(dir).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CheckpointFormatError);
      expect((err as CheckpointFormatError).file).toBe("adapter_config.json");
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain(dir);
    }
  });

  it("refuses tensors outside the PEFT pattern or the target modules", async () => {
    const extra = new Map(tensorsOf(pairs));
    extra.set("model.layers.0.self_attn.q_proj.weight", pairs[0].a);
    await expect(readPeftFolder(await folderWith(extra))).rejects.toThrow(/not a PEFT LoRA weight name/);

    const untargeted = tensorsOf([pair("model.layers.0.self_attn.k_proj", 4, 4, 1)]);
    await expect(readPeftFolder(await folderWith(untargeted))).rejects.toThrow(/k_proj is not in target_modules/);
  });

  it("refuses incomplete pairs and wrong shapes", async () => {
    const missingB = tensorsOf(pairs);
    missingB.delete(peftTensorName(pairs[1].module, "B"));
    await expect(readPeftFolder(await folderWith(missingB))).rejects.toThrow(/v_proj has lora_A but no lora_B/);

    const badRank = tensorsOf([{ ...pairs[0], a: { shape: [3, 4], data: new Float32Array(12) } }]);
    await expect(readPeftFolder(await folderWith(badRank))).rejects.toThrow(/is not \[r=2, in\]/);

    await expect(writePeftFolder(await tempDir(), config, [{ ...pairs[0], b: { shape: [4], data: new Float32Array(4) } }]))
      .rejects.toThrow(/is not \[out, r=2\]/);
  });

  it("keeps any base_model_name_or_path as written and never follows it", async () => {
    for (const base of ["../../etc", "/etc/passwd", "file:///etc/passwd", "s3://other-bucket/x", null]) {
      const dir = await folderWith(tensorsOf(pairs), { ...config, base_model_name_or_path: base });
      const folder = await readPeftFolder(dir);
      expect(folder.config.base_model_name_or_path).toBe(base);
      expect(folder.pairs).toHaveLength(3);
    }
    const { base_model_name_or_path: _, ...without } = config;
    expect((await readPeftFolder(await folderWith(tensorsOf(pairs), without))).pairs).toHaveLength(3);
  });

  it("checks an adapter against its base model's config from the headers", async () => {
    const model = (overrides: Record<string, unknown> = {}) =>
      parseLlamaConfig({ vocab_size: 8, hidden_size: 4, intermediate_size: 6, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 16, ...overrides });
    const complete = [...pairs, pair("model.layers.1.self_attn.v_proj", 4, 2, 300)];
    const inventory = await inspectPeftFolder(await folderWith(tensorsOf(complete)));
    expect(() => checkAdapterFits(inventory, model())).not.toThrow();
    const fits = async (list: LoraPair[], overrides: Record<string, unknown> = {}) =>
      checkAdapterFits(await inspectPeftFolder(await folderWith(tensorsOf(list))), model(overrides));
    await expect(fits(pairs)).rejects.toThrow(/^adapter_model.safetensors: missing tensor "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"/);
    await expect(fits(complete, { num_hidden_layers: 1 })).rejects.toThrow(/adapts model.layers.1.self_attn.q_proj, which the base model does not have/);
    await expect(fits(complete, { hidden_size: 8, intermediate_size: 12 })).rejects.toThrow(/has shape \[2, 4\], the base model needs \[2, 8\]/);
  });

  it("reports a missing weights file", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "adapter_config.json"), JSON.stringify(config));
    await expect(readPeftFolder(dir)).rejects.toThrow(/^missing adapter_model.safetensors$/);
  });
});
