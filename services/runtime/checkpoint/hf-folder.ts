/**
 * Hugging Face model folders: config.json, model.safetensors or a sharded
 * model.safetensors.index.json, and the tokenizer / generation files beside them.
 * The config and tokenizer contents are validated by their own owners (model, tokenizer).
 */
import { copyFile, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import type { HostTensors } from "../host-tensor.ts";
import { isPlainObject } from "../json.ts";
import { CheckpointFormatError, readSafetensors, writeSafetensors } from "./safetensors.ts";

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

/** Reads a Hugging Face model folder with safetensors weights. */
export async function readHfFolder(dir: string): Promise<HfModelFolder> {
  const config = await readJsonObject(join(dir, CONFIG_FILE));
  const weights = (await isFile(join(dir, WEIGHTS_FILE)))
    ? await readSingle(dir)
    : await readSharded(dir);
  const folder: HfModelFolder = { dir, config, ...weights };
  if (await isFile(join(dir, TOKENIZER_FILE))) folder.tokenizerPath = join(dir, TOKENIZER_FILE);
  if (await isFile(join(dir, TOKENIZER_CONFIG_FILE))) {
    folder.tokenizerConfigPath = join(dir, TOKENIZER_CONFIG_FILE);
    folder.tokenizerConfig = await readJsonObject(folder.tokenizerConfigPath);
  }
  if (await isFile(join(dir, GENERATION_CONFIG_FILE))) {
    folder.generationConfig = await readJsonObject(join(dir, GENERATION_CONFIG_FILE));
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

/** Reads a JSON file that must hold an object; a CheckpointFormatError names the file otherwise. */
export async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new CheckpointFormatError(`${basename(path)} is missing`);
    }
    throw err;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CheckpointFormatError(`${basename(path)} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(value)) throw new CheckpointFormatError(`${basename(path)} is not a JSON object`);
  return value;
}

/** Pretty JSON with a trailing newline, as transformers writes it. */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

type Weights = Pick<HfModelFolder, "tensors" | "metadata" | "weightFiles">;

async function readSingle(dir: string): Promise<Weights> {
  const { tensors, metadata } = await readNamed(dir, WEIGHTS_FILE);
  return { tensors, metadata, weightFiles: [WEIGHTS_FILE] };
}

async function readSharded(dir: string): Promise<Weights> {
  if (!(await isFile(join(dir, WEIGHTS_INDEX_FILE)))) {
    throw new CheckpointFormatError(
      `no ${WEIGHTS_FILE} or ${WEIGHTS_INDEX_FILE} in ${dir} (only safetensors weights are supported)`,
    );
  }
  const index = await readJsonObject(join(dir, WEIGHTS_INDEX_FILE));
  const weightMap = index.weight_map;
  if (!isPlainObject(weightMap) || Object.keys(weightMap).length === 0) {
    throw new CheckpointFormatError(`${WEIGHTS_INDEX_FILE}: weight_map is missing, empty or not an object`);
  }
  const expected = new Map<string, Set<string>>(); // shard -> tensor names the map puts there
  for (const [name, shard] of Object.entries(weightMap)) {
    // Shards are plain file names beside the index: a path could reach outside the folder.
    if (typeof shard !== "string" || shard !== basename(shard) || shard === "." || shard === "..") {
      throw new CheckpointFormatError(`${WEIGHTS_INDEX_FILE}: tensor "${name}" maps to ${JSON.stringify(shard)}, not a file name`);
    }
    if (!expected.has(shard)) expected.set(shard, new Set());
    expected.get(shard)!.add(name);
  }
  const tensors: HostTensors = new Map();
  const metadata: Record<string, string> = {};
  const shards = [...expected.keys()].sort();
  for (const shard of shards) {
    if (!(await isFile(join(dir, shard)))) {
      throw new CheckpointFormatError(`${WEIGHTS_INDEX_FILE}: shard ${shard} does not exist`);
    }
    const content = await readNamed(dir, shard);
    const names = expected.get(shard)!;
    for (const [name, tensor] of content.tensors) {
      if (tensors.has(name)) throw new CheckpointFormatError(`tensor "${name}" appears in more than one shard (again in ${shard})`);
      if (!names.has(name)) {
        throw new CheckpointFormatError(`tensor "${name}" is in ${shard} but ${WEIGHTS_INDEX_FILE} maps it to ${JSON.stringify(weightMap[name] ?? null)}`);
      }
      tensors.set(name, tensor);
    }
    for (const name of names) {
      if (!content.tensors.has(name)) throw new CheckpointFormatError(`tensor "${name}" is mapped to ${shard} but is not in it`);
    }
    Object.assign(metadata, content.metadata);
  }
  return { tensors, metadata, weightFiles: shards };
}

async function readNamed(dir: string, file: string) {
  try {
    return await readSafetensors(join(dir, file));
  } catch (err) {
    if (err instanceof CheckpointFormatError) err.message = `${file}: ${err.message}`;
    throw err;
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
