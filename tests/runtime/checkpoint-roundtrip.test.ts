// Save -> load through the on-disk formats gives the same model: HF folder (config, weights,
// tokenizer) and PEFT adapter folder, read back by the runtime's loaders.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, describe, expect, it } from "vitest";
import { readHfFolder, writeHfFolder } from "../../services/runtime/checkpoint/hf-folder.ts";
import { fromPeftConfig, pairWeights, readPeftFolder } from "../../services/runtime/checkpoint/peft-folder.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { parseLlamaConfig, toHfConfigJson } from "../../services/runtime/model/config.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { writeAdapterFolder } from "../../services/runtime/pipeline/training-state.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../../services/runtime/tokenizer.ts";
import { EXAMPLES, tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

const dir = mkdtempSync(join(tmpdir(), "vaccine-roundtrip-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function logits(model: LlamaModel, ids: number[], adapter?: LoraAdapter): Float32Array {
  return tf.tidy(() => model.forward(tf.tensor2d([ids], [1, ids.length], "int32"), tf.ones([1, ids.length]) as tf.Tensor2D, { lora: adapter }).logits.dataSync() as Float32Array);
}

describe("checkpoint round trips", () => {
  it("model, tokenizer and adapter give identical logits after save and load", async () => {
    const tokenizer = tinyTokenizer();
    const model = tinyWorldModel(tokenizer, 4);
    const adapter = LoraAdapter.init(model.config, { r: 2, alpha: 4, dropout: 0, targetModules: ["q_proj", "down_proj"] }, 2);
    for (const p of adapter.pairs.values()) tf.tidy(() => p.b.assign(tf.randomNormal(p.b.shape, 0, 0.3, "float32", 7)));

    const modelDir = join(dir, "model");
    await writeHfFolder(modelDir, { config: toHfConfigJson(model.config), tensors: model.exportWeights() });
    writeFileSync(join(modelDir, "tokenizer.json"), JSON.stringify(buildWordTokenizer(EXAMPLES.flatMap((e) => [formatPrompt(e), e.output]))));
    writeFileSync(join(modelDir, "tokenizer_config.json"), JSON.stringify(wordTokenizerConfig()));
    const adapterDir = join(dir, "adapter");
    await writeAdapterFolder(adapterDir, adapter, { uri: "store://checkpoints/x", digest: "sha256:x" });

    const folder = await readHfFolder(modelDir);
    const loadedModel = LlamaModel.fromWeights(parseLlamaConfig(folder.config), folder.tensors);
    const loadedTokenizer = loadTokenizer(modelDir);
    const peft = await readPeftFolder(adapterDir);
    const loadedAdapter = LoraAdapter.fromWeights(loadedModel.config, fromPeftConfig(peft.config), pairWeights(peft.pairs));

    const text = formatPrompt(EXAMPLES[0]) + EXAMPLES[0].output;
    const ids = [tokenizer.bosId!, ...tokenizer.encode(text)];
    expect([loadedTokenizer.bosId!, ...loadedTokenizer.encode(text)]).toEqual(ids);
    expect(loadedTokenizer.decode(ids)).toBe(tokenizer.decode(ids));
    expect(logits(loadedModel, ids)).toEqual(logits(model, ids));
    expect(logits(loadedModel, ids, loadedAdapter)).toEqual(logits(model, ids, adapter));
    expect(logits(model, ids, adapter)).not.toEqual(logits(model, ids));
    for (const m of [model, loadedModel]) m.dispose();
    for (const a of [adapter, loadedAdapter]) a.dispose();
  });
});
