/**
 * The tiny base model shipped in the repository (models/base, built by
 * scripts/build-base-model.ts): where it lives, how to load it, and greedy answering in
 * the reference's evaluation style, which its build script and its tests share.
 */
import { join } from "node:path";
import { readLlamaFolder } from "./checkpoint/llama-folder.ts";
import type { LlamaConfig } from "./model/config.ts";
import { LlamaModel } from "./model/llama.ts";
import { MODELS_DIR } from "./models-dir.ts";
import type { LoraAdapter } from "./model/lora.ts";
import { answer } from "./pipeline/answers.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Absolute path of the shipped base model folder. */
export const BASE_MODEL_DIR = join(MODELS_DIR, "base");

export interface LoadedModel {
  model: LlamaModel;
  tokenizer: Tokenizer;
  config: LlamaConfig;
}

/** Loads a Hugging Face Llama folder (the shipped base model by default), weights frozen. */
export async function loadBaseModel(dir: string = BASE_MODEL_DIR): Promise<LoadedModel> {
  const { config, tensors, tokenizer } = await readLlamaFolder(dir);
  return { model: LlamaModel.fromWeights(config, tensors), tokenizer, config };
}

/** Greedy answers as the reference evaluates them (pipeline/answers.ts), texts only. */
export function greedyAnswers(
  model: LlamaModel,
  tokenizer: Tokenizer,
  examples: ReadonlyArray<{ instruction: string; input?: string }>,
  opts: { maxNewTokens: number; lora?: LoraAdapter },
): string[] {
  return answer({ model, tokenizer, adapter: opts.lora }, examples, { maxNewTokens: opts.maxNewTokens }).map((a) => a.text);
}
