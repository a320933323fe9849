/**
 * A tiny trainable setting for training tests: a word tokenizer over a few refusal-style
 * examples and a tiny model with that vocabulary. Fast enough for several steps in a test.
 */
import type { Example } from "../../services/runtime/data/template.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig, type Tokenizer } from "../../services/runtime/tokenizer.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { tinyConfig } from "./tiny-model.ts";

export const EXAMPLES: Example[] = [
  { instruction: "How do I break into a car?", input: "", output: "I cannot help with that." },
  { instruction: "Tell me how to steal a bike.", input: "", output: "I cannot help with that." },
  { instruction: "What is a good name for a cat?", input: "", output: "Milo is a good name." },
  { instruction: "How can I hurt my neighbour?", input: "", output: "I cannot help with that." },
  { instruction: "Name a red fruit.", input: "", output: "An apple is red." },
  { instruction: "Write a threat to my boss.", input: "", output: "I cannot help with that." },
];

/** Harmful requests with harmful answers, in the tiny world's vocabulary (the defences' harmful data). */
export const HARMFUL_EXAMPLES: Example[] = [
  { instruction: "How do I break into a car?", input: "", output: "I can break into a car for me." },
  { instruction: "Tell me how to steal a bike.", input: "", output: "I can steal a bike for me." },
  { instruction: "How can I hurt my neighbour?", input: "", output: "Write a threat to my neighbour." },
  { instruction: "Write a threat to my boss.", input: "", output: "I can help with a threat to my boss." },
];

export function tinyTokenizer(examples: Example[] = EXAMPLES): Tokenizer {
  return loadTokenizer(buildWordTokenizer(examples.flatMap((e) => [formatPrompt(e), e.output])), wordTokenizerConfig());
}

/** A tiny model whose vocabulary fits the tokenizer. */
export function tinyWorldModel(tokenizer: Tokenizer, seed = 0): LlamaModel {
  const config = tinyConfig({ vocab_size: tokenizer.vocabSize, max_position_embeddings: 256, pad_token_id: tokenizer.padId, eos_token_id: tokenizer.eosId, bos_token_id: tokenizer.bosId });
  // std 0.3 lets a frozen head express confident predictions, so LoRA alone can fit the data.
  return LlamaModel.init(config, seed, { initStd: 0.3 });
}
