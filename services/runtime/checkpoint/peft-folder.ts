/**
 * PEFT LoRA adapter folders: adapter_config.json and adapter_model.safetensors, in the
 * layout `peft` saves (tensor names without the adapter name), so adapters load in PEFT.
 * The in-memory adapter (model/lora.ts) knows no file format: its LoraConfig and weight
 * names are mapped to PEFT's here, and only here. base_model_name_or_path is kept as
 * written and never used: the base of a stored adapter is its manifest's parent.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CheckpointFormatError, fileReadError } from "../format-error.ts";
import type { HostTensor, HostTensors } from "../host-tensor.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LINEAR_MODULES, type LinearModule } from "../model/llama.ts";
import { loraWeightName, loraWeightShapes, parseLoraWeightName, validateLoraConfig, type LoraConfig } from "../model/lora.ts";
import { writeJson } from "./hf-folder.ts";
import { readJsonObject } from "../json.ts";
import { readSafetensors, readSafetensorsHeader, writeSafetensors, type SafetensorsHeader } from "./safetensors.ts";

export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";

/** The adapter_config.json fields this runtime relies on; other PEFT fields pass through. */
export interface LoraAdapterConfig {
  /** Informational only (a hub name or path on someone's machine): never dereferenced. */
  base_model_name_or_path?: string | null;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  /** Module names matched as PEFT does: the key equals a name or ends with "." + name. */
  target_modules: string[];
  peft_type: "LORA";
  task_type: "CAUSAL_LM";
  bias: "none";
  [field: string]: unknown;
}

/** One LoRA pair: A [r, in] and B [out, r] for a module such as "model.layers.0.self_attn.q_proj". */
export interface LoraPair {
  module: string;
  a: HostTensor;
  b: HostTensor;
}

export interface PeftAdapterFolder {
  dir: string;
  config: LoraAdapterConfig;
  /** Pairs sorted by module name. */
  pairs: LoraPair[];
}

/** An adapter folder's config and weight header, checked, before any tensor data is read. */
export interface PeftFolderInventory {
  config: LoraAdapterConfig;
  header: SafetensorsHeader;
}

/** PEFT saves the weights of its wrapper (base_model) around the model (model). */
const PEFT_PREFIX = "base_model.model.";

/** The PEFT file name of a module's A or B matrix. */
export function peftTensorName(module: string, matrix: "A" | "B"): string {
  return PEFT_PREFIX + loraWeightName(module, matrix);
}

/** The module and matrix of a PEFT file name, or null for any other name. */
function parsePeftTensorName(name: string): { module: string; matrix: "A" | "B" } | null {
  return name.startsWith(PEFT_PREFIX) ? parseLoraWeightName(name.slice(PEFT_PREFIX.length)) : null;
}

/** Adapter weights (named by loraWeightName) under their PEFT file names. */
export function toPeftTensors(weights: HostTensors): HostTensors {
  const out: HostTensors = new Map();
  for (const [name, tensor] of weights) {
    const parsed = parseLoraWeightName(name);
    if (!parsed) throw new Error(`"${name}" is not a LoRA weight name`);
    out.set(peftTensorName(parsed.module, parsed.matrix), tensor);
  }
  return out;
}

/** The adapter weights (named by loraWeightName) of tensors under PEFT file names. */
export function fromPeftTensors(tensors: HostTensors): HostTensors {
  const out: HostTensors = new Map();
  for (const [name, tensor] of tensors) {
    const parsed = parsePeftTensorName(name);
    if (!parsed) throw new CheckpointFormatError(`tensor "${name}" is not a PEFT LoRA weight name`);
    out.set(loraWeightName(parsed.module, parsed.matrix), tensor);
  }
  return out;
}

/** The adapter weights (named by loraWeightName) of a folder's pairs. */
export function pairWeights(pairs: LoraPair[]): HostTensors {
  return new Map(pairs.flatMap((p) => [[loraWeightName(p.module, "A"), p.a], [loraWeightName(p.module, "B"), p.b]]));
}

/** The adapter_config.json of an adapter over `baseModel` (a path or a store URI). */
export function toPeftConfig(c: LoraConfig, baseModel: string): LoraAdapterConfig {
  return loraAdapterConfig({
    base_model_name_or_path: baseModel,
    r: c.r,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    target_modules: [...c.targetModules],
  });
}

/** The LoRA settings of a (format-validated) adapter_config.json. */
export function fromPeftConfig(config: LoraAdapterConfig): LoraConfig {
  const c: LoraConfig = {
    r: config.r,
    alpha: config.lora_alpha,
    dropout: config.lora_dropout,
    targetModules: config.target_modules as LinearModule[],
  };
  validateLoraConfig(c);
  return c;
}

/** A complete config from the fields that vary, with PEFT's defaults for the rest. */
export function loraAdapterConfig(
  fields: Pick<LoraAdapterConfig, "base_model_name_or_path" | "r" | "lora_alpha" | "target_modules"> &
    Partial<LoraAdapterConfig>,
): LoraAdapterConfig {
  return validateConfig({
    lora_dropout: 0,
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    modules_to_save: null,
    ...fields,
  });
}

/** Reads the config and the weight header and checks that they agree; no tensor data is read. */
export async function inspectPeftFolder(dir: string): Promise<PeftFolderInventory> {
  const config = validateConfig(readJsonObject(join(dir, ADAPTER_CONFIG_FILE)));
  const header = await inWeightsFile(() => readSafetensorsHeader(join(dir, ADAPTER_WEIGHTS_FILE)));
  const shapes = new Map(header.entries.map((e) => [e.name, { shape: e.shape }]));
  inWeightsFileSync(() => pairsFromTensors(shapes, config));
  return { config, header };
}

/** Reads and validates an adapter folder. */
export async function readPeftFolder(dir: string): Promise<PeftAdapterFolder> {
  const config = validateConfig(readJsonObject(join(dir, ADAPTER_CONFIG_FILE)));
  const { tensors } = await inWeightsFile(() => readSafetensors(join(dir, ADAPTER_WEIGHTS_FILE)));
  return { dir, config, pairs: inWeightsFileSync(() => pairsFromTensors(tensors, config)) };
}

/**
 * Checks an adapter's tensors against the model it is to be applied to: every targeted
 * projection of every layer, with [r, in] and [out, r] shapes from the model's config.
 */
export function checkAdapterFits(inventory: PeftFolderInventory, model: LlamaConfig): void {
  const expected = loraWeightShapes(model, fromPeftConfig(inventory.config));
  const fail = (message: string): never => {
    throw new CheckpointFormatError(`${message} (the base model has ${model.numHiddenLayers} layers, hidden_size ${model.hiddenSize})`, ADAPTER_WEIGHTS_FILE);
  };
  const seen = new Set<string>();
  for (const entry of inventory.header.entries) {
    const parsed = parsePeftTensorName(entry.name)!;
    const name = loraWeightName(parsed.module, parsed.matrix);
    const shape = expected.get(name);
    if (!shape) fail(`tensor "${entry.name}" adapts ${parsed.module}, which the base model does not have`);
    if (shape!.length !== entry.shape.length || shape!.some((d, i) => d !== entry.shape[i])) {
      fail(`tensor "${entry.name}" has shape [${entry.shape.join(", ")}], the base model needs [${shape!.join(", ")}]`);
    }
    seen.add(name);
  }
  const missing = [...expected.keys()].filter((name) => !seen.has(name));
  if (missing.length > 0) {
    const first = parseLoraWeightName(missing[0])!;
    fail(`missing tensor "${peftTensorName(first.module, first.matrix)}"${missing.length > 1 ? ` and ${missing.length - 1} more` : ""} for target_modules ${JSON.stringify(inventory.config.target_modules)}`);
  }
}

/** Writes an adapter folder after validating it as readPeftFolder would. */
export async function writePeftFolder(dir: string, config: LoraAdapterConfig, pairs: LoraPair[]): Promise<void> {
  const valid = validateConfig(config);
  const tensors: HostTensors = new Map();
  for (const { module, a, b } of pairs) {
    tensors.set(peftTensorName(module, "A"), a);
    tensors.set(peftTensorName(module, "B"), b);
  }
  pairsFromTensors(tensors, valid);
  await mkdir(dir, { recursive: true });
  await writeJson(join(dir, ADAPTER_CONFIG_FILE), valid);
  await writeFile(join(dir, ADAPTER_WEIGHTS_FILE), writeSafetensors(tensors));
}

/** Largest LoRA rank accepted: far above any practical adapter, and it bounds what a config can make a loader allocate. */
const MAX_LORA_RANK = 4096;

function validateConfig(raw: Record<string, unknown>): LoraAdapterConfig {
  const fail = (message: string): never => {
    throw new CheckpointFormatError(message, ADAPTER_CONFIG_FILE);
  };
  if (raw.peft_type !== "LORA") fail(`peft_type is ${JSON.stringify(raw.peft_type)}, expected "LORA"`);
  if (raw.task_type !== "CAUSAL_LM") fail(`task_type is ${JSON.stringify(raw.task_type)}, expected "CAUSAL_LM"`);
  if (raw.bias !== "none") fail(`bias is ${JSON.stringify(raw.bias)}; only "none" is supported`);
  const base = raw.base_model_name_or_path;
  if (base !== undefined && base !== null && typeof base !== "string") {
    fail(`base_model_name_or_path must be a string or null, got ${JSON.stringify(base)}`);
  }
  if (!Number.isInteger(raw.r) || (raw.r as number) <= 0 || (raw.r as number) > MAX_LORA_RANK) {
    fail(`r must be an integer in [1, ${MAX_LORA_RANK}], got ${JSON.stringify(raw.r)}`);
  }
  if (typeof raw.lora_alpha !== "number" || !(raw.lora_alpha > 0)) fail(`lora_alpha must be a positive number, got ${JSON.stringify(raw.lora_alpha)}`);
  if (typeof raw.lora_dropout !== "number" || !(raw.lora_dropout >= 0 && raw.lora_dropout < 1)) {
    fail(`lora_dropout must be in [0, 1), got ${JSON.stringify(raw.lora_dropout)}`);
  }
  // PEFT also accepts a regex string here; this runtime names modules explicitly.
  const targets = raw.target_modules;
  if (!Array.isArray(targets) || targets.length === 0 || !targets.every((t) => typeof t === "string" && t !== "")) {
    fail(`target_modules must be a non-empty list of module names, got ${JSON.stringify(targets)}`);
  }
  const unknown = (targets as string[]).filter((t) => !(LINEAR_MODULES as readonly string[]).includes(t));
  if (unknown.length > 0) fail(`target_modules names unknown modules ${JSON.stringify(unknown)}; known: ${LINEAR_MODULES.join(", ")}`);
  if (new Set(targets as string[]).size !== (targets as string[]).length) fail("target_modules repeats a module");
  // Per-module ranks, DoRA and extra saved modules change the tensors this format holds.
  for (const field of ["rank_pattern", "alpha_pattern"]) {
    const value = raw[field];
    if (value !== undefined && value !== null && Object.keys(value as object).length > 0) fail(`${field} is not supported`);
  }
  if (raw.use_dora === true) fail("use_dora is not supported");
  // Each of these changes the update the weights describe (scaling, layout, layers, bias).
  if (raw.use_rslora === true) fail("use_rslora is not supported");
  if (raw.fan_in_fan_out === true) fail("fan_in_fan_out is not supported");
  if (raw.lora_bias === true) fail("lora_bias is not supported");
  if (raw.layers_to_transform !== undefined && raw.layers_to_transform !== null) fail("layers_to_transform is not supported");
  if (Array.isArray(raw.modules_to_save) && raw.modules_to_save.length > 0) fail("modules_to_save is not supported");
  return raw as LoraAdapterConfig;
}

/** Errors of reading the weights file name it. */
async function inWeightsFile<T>(read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err.inFile(ADAPTER_WEIGHTS_FILE);
    throw fileReadError(err, ADAPTER_WEIGHTS_FILE);
  }
}

function inWeightsFileSync<T>(check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err.inFile(ADAPTER_WEIGHTS_FILE);
    throw err;
  }
}

/** Pairs of A and B by module, every name and rank checked; works on headers (shapes) and on read tensors alike. */
function pairsFromTensors<T extends { shape: number[] }>(tensors: Map<string, T>, config: LoraAdapterConfig): { module: string; a: T; b: T }[] {
  const byModule = new Map<string, { a?: T; b?: T }>();
  for (const [name, tensor] of tensors) {
    const parsed = parsePeftTensorName(name);
    if (!parsed) throw new CheckpointFormatError(`tensor "${name}" is not a PEFT LoRA weight name`);
    const { module, matrix } = parsed;
    if (!config.target_modules.some((t) => module === t || module.endsWith(`.${t}`))) {
      throw new CheckpointFormatError(
        `tensor "${name}": module ${module} is not in target_modules ${JSON.stringify(config.target_modules)}`,
      );
    }
    const pair = byModule.get(module) ?? {};
    pair[matrix === "A" ? "a" : "b"] = tensor;
    byModule.set(module, pair);
  }
  if (byModule.size === 0) throw new CheckpointFormatError("the adapter has no LoRA weights");
  const r = config.r;
  return [...byModule.keys()].sort().map((module) => {
    const { a, b } = byModule.get(module)!;
    if (!a || !b) {
      throw new CheckpointFormatError(`module ${module} has lora_${a ? "A" : "B"} but no lora_${a ? "B" : "A"}`);
    }
    if (a.shape.length !== 2 || a.shape[0] !== r) {
      throw new CheckpointFormatError(`tensor "${peftTensorName(module, "A")}": shape [${a.shape.join(", ")}] is not [r=${r}, in]`);
    }
    if (b.shape.length !== 2 || b.shape[1] !== r) {
      throw new CheckpointFormatError(`tensor "${peftTensorName(module, "B")}": shape [${b.shape.join(", ")}] is not [out, r=${r}]`);
    }
    return { module, a, b };
  });
}
