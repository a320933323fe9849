/**
 * A tiny random moderation classifier checkpoint in the store, for plumbing tests of Score;
 * with labels ["refusal"], a tiny random refusal classifier.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { ModerationClassifier, writeModerationCheckpoint, DEFAULT_INPUT_TEMPLATE } from "../../services/runtime/moderation/classifier.ts";
import { KIND } from "../../services/runtime/pipeline/kinds.ts";
import type { CheckpointRef, CheckpointStore } from "../../services/runtime/store/store.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../../services/runtime/tokenizer.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { EXAMPLES } from "./tiny-world.ts";
import { tinyConfig } from "./tiny-model.ts";

export const TINY_LABELS = ["violence", "theft"];

export async function putTinyModeration(
  store: CheckpointStore,
  tokenizerJson: Record<string, unknown> = buildWordTokenizer(EXAMPLES.flatMap((e) => [formatPrompt(e), e.output])),
  labels: string[] = TINY_LABELS,
): Promise<CheckpointRef> {
  const tokenizer = loadTokenizer(tokenizerJson, wordTokenizerConfig());
  const llama = { ...tinyConfig({ vocab_size: tokenizer.vocabSize, max_position_embeddings: 256 }), tieWordEmbeddings: true };
  const score = tf.variable(tf.randomNormal([labels.length, llama.hiddenSize], 0, 0.5, "float32", 1), false);
  const classifier = new ModerationClassifier({ llama, labels, inputTemplate: DEFAULT_INPUT_TEMPLATE }, LlamaModel.init(llama, 5, { initStd: 0.3 }), score, tokenizer);
  const dir = mkdtempSync(join(tmpdir(), "vaccine-moderation-"));
  try {
    await writeModerationCheckpoint(dir, classifier, tokenizerJson, wordTokenizerConfig());
    return await store.put(dir, { kind: KIND.moderation, meta: { name: "tiny-moderation" } });
  } finally {
    classifier.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}
