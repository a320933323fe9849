/** A local checkpoint store holding the tiny-world model as a base checkpoint and its examples as a dataset. */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeHfFolder } from "../../services/runtime/checkpoint/hf-folder.ts";
import { toHfConfigJson } from "../../services/runtime/model/config.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { KIND } from "../../services/runtime/pipeline/kinds.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import type { CheckpointRef, CheckpointStore } from "../../services/runtime/store/store.ts";
import { buildWordTokenizer, wordTokenizerConfig } from "../../services/runtime/tokenizer.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { EXAMPLES, tinyTokenizer, tinyWorldModel } from "./tiny-world.ts";

export interface TinyStore {
  root: string;
  store: LocalCheckpointStore;
  base: CheckpointRef;
  /** The tiny world's alignment examples (JSONL). */
  data: string;
  cleanup(): void;
}

/** Writes a model as a Hugging Face folder with a tokenizer (default: the tiny-world one) and puts it in the store. */
export async function putModel(
  store: CheckpointStore,
  model: LlamaModel,
  tokenizerJson: Record<string, unknown> = buildWordTokenizer(EXAMPLES.flatMap((e) => [formatPrompt(e), e.output])),
): Promise<CheckpointRef> {
  const dir = mkdtempSync(join(tmpdir(), "vaccine-model-"));
  try {
    const out = join(dir, "model");
    await writeHfFolder(out, { config: toHfConfigJson(model.config), tensors: model.exportWeights() });
    writeFileSync(join(out, "tokenizer.json"), JSON.stringify(tokenizerJson));
    writeFileSync(join(out, "tokenizer_config.json"), JSON.stringify(wordTokenizerConfig()));
    return await store.put(out, { kind: KIND.model, meta: { name: "tiny-world" } });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The tiny world's alignment examples as a JSONL dataset at `uri`. */
export async function putExamples(store: CheckpointStore, uri = "store://datasets/align.jsonl"): Promise<string> {
  await store.putObject(uri, Buffer.from(EXAMPLES.map((e) => JSON.stringify(e)).join("\n")));
  return uri;
}

/** In `root`, a new temp folder unless given (a process under test may share it). */
export async function tinyStore(root = mkdtempSync(join(tmpdir(), "vaccine-store-"))): Promise<TinyStore> {
  const store = new LocalCheckpointStore(root);
  const model = tinyWorldModel(tinyTokenizer());
  const base = await putModel(store, model);
  model.dispose();
  const data = await putExamples(store);
  return { root, store, base, data, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}
