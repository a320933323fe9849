/**
 * A Hugging Face folder judged as a Llama causal LM before its weights are read: the
 * config (bounded), the size it describes against the bytes on disk, every tensor's name
 * and shape against the config, and the tokenizer. Loading and importing share it, so a
 * folder that imports is a folder that loads.
 */
import { join } from "node:path";
import { CheckpointFormatError } from "../format-error.ts";
import { readJsonObject } from "../json.ts";
import type { HostTensors } from "../host-tensor.ts";
import { parseLlamaConfig, type LlamaConfig } from "../model/config.ts";
import { llamaParameterCount, llamaWeightShapes } from "../model/llama.ts";
import { loadTokenizer, type Tokenizer } from "../tokenizer.ts";
import {
  CONFIG_FILE,
  TOKENIZER_CONFIG_FILE,
  inspectHfFolder,
  readHfFolder,
  type HfFolderInventory,
} from "./hf-folder.ts";

const CAUSAL_LM_ARCHITECTURE = "LlamaForCausalLM";

export interface LlamaFolderCheck {
  config: LlamaConfig;
  inventory: HfFolderInventory;
}

export interface LlamaFolder {
  config: LlamaConfig;
  tensors: HostTensors;
  tokenizer: Tokenizer;
}

/** The config parsed and the weight headers checked against it; no tensor data is read. */
export async function checkLlamaFolder(dir: string): Promise<LlamaFolderCheck> {
  const inventory = await inspectHfFolder(dir);
  const architectures = inventory.config.architectures;
  if (architectures !== undefined && !(Array.isArray(architectures) && architectures.includes(CAUSAL_LM_ARCHITECTURE))) {
    throw new CheckpointFormatError(`architectures ${JSON.stringify(architectures)} do not include ${CAUSAL_LM_ARCHITECTURE}`, CONFIG_FILE);
  }
  const config = parseConfig(inventory.config);
  checkWeights(config, inventory);
  return { config, inventory };
}

/**
 * The tokenizer of a checked folder, as an import requires it: tokenizer.json and
 * tokenizer_config.json present and parsing, an eos token, ids that fit the embedding, and
 * a text that encodes and decodes.
 */
export async function checkLlamaTokenizer(dir: string, config: LlamaConfig): Promise<Tokenizer> {
  readJsonObject(join(dir, TOKENIZER_CONFIG_FILE));
  return tokenizerOf(dir, config);
}

/** Checks the folder, then reads its weights and tokenizer. */
export async function readLlamaFolder(dir: string): Promise<LlamaFolder> {
  const { config } = await checkLlamaFolder(dir);
  const { tensors } = await readHfFolder(dir);
  return { config, tensors, tokenizer: tokenizerOf(dir, config) };
}

function parseConfig(raw: Record<string, unknown>): LlamaConfig {
  try {
    return parseLlamaConfig(raw);
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err.inFile(CONFIG_FILE);
    throw err;
  }
}

/**
 * The size the config describes must fit the bytes on disk (2 bytes a weight at least)
 * before any per-tensor work; then every expected tensor with its shape, nothing else
 * but what real checkpoints carry harmlessly (a tied model's lm_head, rotary buffers).
 */
function checkWeights(config: LlamaConfig, inventory: HfFolderInventory): void {
  const parameters = llamaParameterCount(config);
  if (parameters * 2 > inventory.tensorBytes) {
    throw new CheckpointFormatError(
      `describes ${parameters} weights (${parameters * 2} bytes even in 16 bits), the weight files hold ${inventory.tensorBytes} bytes of tensors`,
      CONFIG_FILE,
    );
  }
  const expected = llamaWeightShapes(config);
  const shape = (dims: number[]) => `[${dims.join(", ")}]`;
  for (const [name, dims] of expected) {
    const entry = inventory.tensors.get(name);
    if (!entry) throw new CheckpointFormatError(`missing tensor "${name}" ${shape(dims)}`, inventory.weightsListFile);
    if (entry.shape.length !== dims.length || entry.shape.some((d, i) => d !== dims[i])) {
      throw new CheckpointFormatError(`tensor "${name}" has shape ${shape(entry.shape)}, ${CONFIG_FILE} implies ${shape(dims)}`, entry.file);
    }
  }
  for (const [name, entry] of inventory.tensors) {
    if (expected.has(name) || name.endsWith(".rotary_emb.inv_freq")) continue;
    if (name === "lm_head.weight" && config.tieWordEmbeddings) continue;
    throw new CheckpointFormatError(`unexpected tensor "${name}" (not a weight of the Llama model ${CONFIG_FILE} describes)`, entry.file);
  }
}

function tokenizerOf(dir: string, config: LlamaConfig): Tokenizer {
  const tokenizer = loadTokenizer(dir);
  const fail = (message: string): never => {
    throw new CheckpointFormatError(message, "tokenizer.json");
  };
  if (tokenizer.vocabSize > config.vocabSize) fail(`has token ids up to ${tokenizer.vocabSize - 1}, beyond vocab_size ${config.vocabSize} of ${CONFIG_FILE}`);
  try {
    tokenizer.decode(tokenizer.encode("Hello, world."));
  } catch (err) {
    fail(`cannot encode and decode text: ${(err as Error).message}`);
  }
  return tokenizer;
}
