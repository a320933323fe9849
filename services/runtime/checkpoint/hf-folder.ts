/**
 * Hugging Face model folders: config.json, model.safetensors or a sharded
 * model.safetensors.index.json, and the tokenizer / generation files beside them.
 * The config and tokenizer contents are validated by their own owners (model, tokenizer).
 * Errors name files relative to the folder.
 */
import { copyFile, mkdir, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { CheckpointFormatError, fileReadError, missingFile } from "../format-error.ts";
import type { HostTensors } from "../host-tensor.ts";
import { isPlainObject, readJsonObject } from "../json.ts";
import {
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
  type SafetensorsHeader,
  type TensorEntry,
} from "./safetensors.ts";

export const CONFIG_FILE = "config.json";
export const WEIGHTS_FILE = "model.safetensors";
export const WEIGHTS_INDEX_FILE = "model.safetensors.index.json";
export const TOKENIZER_FILE = "tokenizer.json";
export const TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
export const GENERATION_CONFIG_FILE = "generation_config.json";

export interface HfModelFolder {
  dir: string;
  /** config.json as parsed, unvalidated. */
  config: Record<string, unknown>;
  tensors: HostTensors;
  /** "__metadata__" of the weight file(s), merged across shards. */
  metadata: Record<string, string>;
  /** Weight files read, relative to dir: [model.safetensors] or the shards. */
  weightFiles: string[];
  tokenizerPath?: string;
  tokenizerConfigPath?: string;
  tokenizerConfig?: Record<string, unknown>;
  generationConfig?: Record<string, unknown>;
}

/** A tensor as a header describes it, with the weight file that holds it. */
export interface WeightEntry extends TensorEntry {
  file: string;
}

/** What a folder's config and headers say, before any tensor data is read. */
export interface HfFolderInventory {
  /** config.json as parsed, unvalidated. */
  config: Record<string, unknown>;
  /** Every tensor by name, from the headers. */
  tensors: Map<string, WeightEntry>;
  /** The header of each weight file, by file. */
  headers: Map<string, SafetensorsHeader>;
  /** "__metadata__" of the weight file(s), merged across shards. */
  metadata: Record<string, string>;
  /** [model.safetensors] or the shards, sorted. */
  weightFiles: string[];
  /** The file that lists the weights: model.safetensors or the index (named when one is missing). */
  weightsListFile: string;
  /** Bytes of tensor data in all weight files. */
  tensorBytes: number;
}

export interface WriteHfFolderOptions {
  config: Record<string, unknown>;
  tensors: HostTensors;
  metadata?: Record<string, string>;
  /** Split the weights into shards of at most this many tensor bytes (a larger tensor gets a shard of its own). */
  maxShardBytes?: number;
  /** Files copied into the folder under their base names (tokenizer.json, tokenizer_config.json, ...). */
  copyFiles?: string[];
  generationConfig?: Record<string, unknown>;
}

/**
 * Reads a folder's config and every weight file's header, and checks that they agree:
 * the index names existing shards, each tensor is where the index says, once. No tensor
 * data is read, so a folder can be judged before anything the size of its weights exists.
 */
export async function inspectHfFolder(dir: string): Promise<HfFolderInventory> {
  const config = readJsonObject(join(dir, CONFIG_FILE));
  const weights = (await isFile(join(dir, WEIGHTS_FILE))) ? await inspectSingle(dir) : await inspectSharded(dir);
  let tensorBytes = 0;
  for (const header of weights.headers.values()) for (const e of header.entries) tensorBytes += e.end - e.begin;
  return { config, ...weights, tensorBytes };
}

/** Reads a Hugging Face model folder with safetensors weights (checked as inspectHfFolder does). */
export async function readHfFolder(dir: string): Promise<HfModelFolder> {
  const inventory = await inspectHfFolder(dir);
  const tensors: HostTensors = new Map();
  for (const file of inventory.weightFiles) {
    const content = await readNamed(dir, file);
    for (const [name, tensor] of content.tensors) tensors.set(name, tensor);
  }
  const folder: HfModelFolder = {
    dir,
    config: inventory.config,
    tensors,
    metadata: inventory.metadata,
    weightFiles: inventory.weightFiles,
  };
  if (await isFile(join(dir, TOKENIZER_FILE))) folder.tokenizerPath = join(dir, TOKENIZER_FILE);
  if (await isFile(join(dir, TOKENIZER_CONFIG_FILE))) {
    folder.tokenizerConfigPath = join(dir, TOKENIZER_CONFIG_FILE);
    folder.tokenizerConfig = readJsonObject(folder.tokenizerConfigPath);
  }
  if (await isFile(join(dir, GENERATION_CONFIG_FILE))) {
    folder.generationConfig = readJsonObject(join(dir, GENERATION_CONFIG_FILE));
  }
  return folder;
}

/** Writes a Hugging Face model folder; returns the files written, relative to dir. */
export async function writeHfFolder(dir: string, options: WriteHfFolderOptions): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const written = [CONFIG_FILE];
  await writeJson(join(dir, CONFIG_FILE), options.config);
  const shards = planShards(options.tensors, options.maxShardBytes);
  if (shards.length <= 1) {
    await writeFile(join(dir, WEIGHTS_FILE), writeSafetensors(options.tensors, options.metadata));
    written.push(WEIGHTS_FILE);
  } else {
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (const [i, names] of shards.entries()) {
      const file = `model-${pad5(i + 1)}-of-${pad5(shards.length)}.safetensors`;
      const shard: HostTensors = new Map(names.map((name) => [name, options.tensors.get(name)!]));
      await writeFile(join(dir, file), writeSafetensors(shard, options.metadata));
      for (const [name, tensor] of shard) {
        weightMap[name] = file;
        totalSize += tensor.data.byteLength;
      }
      written.push(file);
    }
    await writeJson(join(dir, WEIGHTS_INDEX_FILE), { metadata: { total_size: totalSize }, weight_map: weightMap });
    written.push(WEIGHTS_INDEX_FILE);
  }
  if (options.generationConfig) {
    await writeJson(join(dir, GENERATION_CONFIG_FILE), options.generationConfig);
    written.push(GENERATION_CONFIG_FILE);
  }
  for (const source of options.copyFiles ?? []) {
    await copyFile(source, join(dir, basename(source)));
    written.push(basename(source));
  }
  return written;
}

/** Pretty JSON with a trailing newline, as transformers writes it. */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

type Weights = Pick<HfFolderInventory, "tensors" | "headers" | "metadata" | "weightFiles" | "weightsListFile">;

async function inspectSingle(dir: string): Promise<Weights> {
  const header = await headerOf(dir, WEIGHTS_FILE);
  const tensors = new Map(header.entries.map((e) => [e.name, { ...e, file: WEIGHTS_FILE }]));
  return { tensors, headers: new Map([[WEIGHTS_FILE, header]]), metadata: header.metadata, weightFiles: [WEIGHTS_FILE], weightsListFile: WEIGHTS_FILE };
}

async function inspectSharded(dir: string): Promise<Weights> {
  if (!(await isFile(join(dir, WEIGHTS_INDEX_FILE)))) {
    const err = missingFile(`${WEIGHTS_FILE} or ${WEIGHTS_INDEX_FILE} (only safetensors weights are supported)`);
    err.file = WEIGHTS_FILE;
    throw err;
  }
  const index = readJsonObject(join(dir, WEIGHTS_INDEX_FILE));
  const indexError = (message: string) => new CheckpointFormatError(message, WEIGHTS_INDEX_FILE);
  const weightMap = index.weight_map;
  if (!isPlainObject(weightMap) || Object.keys(weightMap).length === 0) {
    throw indexError("weight_map is missing, empty or not an object");
  }
  const expected = new Map<string, Set<string>>(); // shard -> tensor names the map puts there
  for (const [name, shard] of Object.entries(weightMap)) {
    // Shards are plain file names beside the index: a path could reach outside the folder.
    if (typeof shard !== "string" || shard !== basename(shard) || shard === "." || shard === ".." || shard.includes("\\")) {
      throw indexError(`tensor "${name}" maps to ${JSON.stringify(shard)}, not a file name`);
    }
    if (!expected.has(shard)) expected.set(shard, new Set());
    expected.get(shard)!.add(name);
  }
  const tensors = new Map<string, WeightEntry>();
  const headers = new Map<string, SafetensorsHeader>();
  const metadata: Record<string, string> = {};
  const shards = [...expected.keys()].sort();
  for (const shard of shards) {
    if (!(await isFile(join(dir, shard)))) {
      const err = missingFile(shard);
      err.message += ` (named in ${WEIGHTS_INDEX_FILE})`;
      throw err;
    }
    const header = await headerOf(dir, shard);
    const names = expected.get(shard)!;
    const inShard = new Set<string>();
    for (const entry of header.entries) {
      const fail = (message: string): never => {
        throw new CheckpointFormatError(message, shard);
      };
      if (tensors.has(entry.name)) fail(`tensor "${entry.name}" appears in more than one shard (also in ${tensors.get(entry.name)!.file})`);
      if (!names.has(entry.name)) {
        fail(`tensor "${entry.name}" is in ${shard} but ${WEIGHTS_INDEX_FILE} maps it to ${JSON.stringify(weightMap[entry.name] ?? null)}`);
      }
      tensors.set(entry.name, { ...entry, file: shard });
      inShard.add(entry.name);
    }
    for (const name of names) {
      if (!inShard.has(name)) throw new CheckpointFormatError(`tensor "${name}" is mapped to ${shard} but is not in it`, shard);
    }
    headers.set(shard, header);
    Object.assign(metadata, header.metadata);
  }
  return { tensors, headers, metadata, weightFiles: shards, weightsListFile: WEIGHTS_INDEX_FILE };
}

/** A weight file's header; its errors name the file. */
async function headerOf(dir: string, file: string): Promise<SafetensorsHeader> {
  try {
    return await readSafetensorsHeader(join(dir, file));
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err.inFile(file);
    throw fileReadError(err, file);
  }
}

async function readNamed(dir: string, file: string) {
  try {
    return await readSafetensors(join(dir, file));
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err.inFile(file);
    throw fileReadError(err, file);
  }
}

/** Greedy shards in name order, so the same tensors always shard the same way. */
function planShards(tensors: HostTensors, maxBytes: number | undefined): string[][] {
  const names = [...tensors.keys()].sort();
  if (maxBytes === undefined) return [names];
  if (!(maxBytes > 0)) throw new RangeError(`maxShardBytes must be positive, got ${maxBytes}`);
  const shards: string[][] = [];
  let current: string[] = [];
  let size = 0;
  for (const name of names) {
    const bytes = tensors.get(name)!.data.byteLength;
    if (current.length > 0 && size + bytes > maxBytes) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(name);
    size += bytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

function pad5(n: number): string {
  return String(n).padStart(5, "0");
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}
