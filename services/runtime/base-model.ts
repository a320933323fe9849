/**
 * The tiny base model shipped in the repository (models/base, built by
 * scripts/build-base-model.ts): where it lives, how to load it, and greedy answering in
 * the reference's evaluation style, which its build script and its tests share.
 */
import { fileURLToPath } from "node:url";
import { readHfFolder } from "./checkpoint/hf-folder.ts";
import { formatPrompt, RESPONSE_MARKER } from "./data/template.ts";
import { parseLlamaConfig, type LlamaConfig } from "./model/config.ts";
import { generate } from "./model/generate.ts";
import { LlamaModel } from "./model/llama.ts";
import type { LoraAdapter } from "./model/lora.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";

/** Absolute path of the shipped base model folder. */
export const BASE_MODEL_DIR = fileURLToPath(new URL("../../models/base/", import.meta.url));

export interface LoadedModel {
  model: LlamaModel;
  tokenizer: Tokenizer;
  config: LlamaConfig;
}

/** Loads a Hugging Face Llama folder (the shipped base model by default), weights frozen. */
export async function loadBaseModel(dir: string = BASE_MODEL_DIR): Promise<LoadedModel> {
  const folder = await readHfFolder(dir);
  const config = parseLlamaConfig(folder.config);
  const tokenizer = loadTokenizer(dir);
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new Error(`tokenizer has ${tokenizer.vocabSize} tokens but the model only ${config.vocabSize}`);
  }
  return { model: LlamaModel.fromWeights(config, folder.tensors), tokenizer, config };
}

/**
 * Greedy answers as the reference evaluates them: the Alpaca prompt (bos first when the
 * tokenizer adds it), new tokens decoded without specials, trimmed. The reference takes
 * split("### Response:")[1] of prompt + generation, so a generation that writes the
 * marker again is cut there (responseOf would keep what follows it instead).
 */
export function greedyAnswers(
  model: LlamaModel,
  tokenizer: Tokenizer,
  examples: ReadonlyArray<{ instruction: string; input?: string }>,
  opts: { maxNewTokens: number; lora?: LoraAdapter },
): string[] {
  const bos = tokenizer.addBos && tokenizer.bosId !== null ? [tokenizer.bosId] : [];
  const prompts = examples.map((e) => [...bos, ...tokenizer.encode(formatPrompt(e))]);
  const ids = generate(model, prompts, { maxNewTokens: opts.maxNewTokens, eosTokenId: tokenizer.eosId, lora: opts.lora });
  return ids.map((out) => tokenizer.decode(out).split(RESPONSE_MARKER)[0].trim());
}
