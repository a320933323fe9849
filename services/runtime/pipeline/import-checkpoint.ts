/**
 * Folders brought from outside (a Hugging Face Llama folder or a PEFT LoRA adapter over a
 * stored checkpoint), validated completely before they are stored: what is visible in the
 * store loads. An imported checkpoint carries the same manifest meta as the runtime's own
 * (a model: {name}; an adapter: {parent, name}), so it loads, trains and embeds like them.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { CONFIG_FILE } from "../checkpoint/hf-folder.ts";
import { readJsonObject } from "../json.ts";
import { checkLlamaFolder, checkLlamaTokenizer } from "../checkpoint/llama-folder.ts";
import { ADAPTER_CONFIG_FILE, checkAdapterFits, inspectPeftFolder } from "../checkpoint/peft-folder.ts";
import { CheckpointFormatError, missingFile } from "../format-error.ts";
import { parseLlamaConfig, type LlamaConfig } from "../model/config.ts";
import { encodeManifest, newManifest, sha256Hex, type CheckpointManifest } from "../store/manifest.ts";
import { checkpointRef, type CheckpointRef, type CheckpointStore } from "../store/store.ts";
import { KIND } from "./kinds.ts";
import { lineageOf } from "./load.ts";

export interface ImportOptions {
  kind: typeof KIND.model | typeof KIND.adapter;
  /** For an adapter: the model or adapter it applies to, and the config of its root model (rootModelConfig). */
  parent?: { ref: CheckpointRef; model: LlamaConfig };
  /** A name for people; part of the meta, so of the digest. */
  name?: string;
}

/** The kinds an imported adapter may apply to. */
export const ADAPTER_PARENT_KINDS: readonly string[] = [KIND.model, KIND.adapter];

/**
 * Checks the folder as its kind requires, then stores it. Format problems are
 * CheckpointFormatErrors naming the file; nothing is stored unless every check passes.
 */
export async function importCheckpoint(store: CheckpointStore, dir: string, options: ImportOptions): Promise<CheckpointRef> {
  if (options.kind === KIND.model) {
    if (!existsSync(join(dir, CONFIG_FILE)) && existsSync(join(dir, ADAPTER_CONFIG_FILE))) {
      const err = missingFile(CONFIG_FILE);
      err.message += `: the folder holds a PEFT adapter (${ADAPTER_CONFIG_FILE}); import it as an adapter over its base`;
      throw err;
    }
    const { config } = await checkLlamaFolder(dir);
    await checkLlamaTokenizer(dir, config);
  } else {
    checkAdapterFits(await inspectPeftFolder(dir), parentOf(options).model);
  }
  return store.put(dir, { kind: options.kind, meta: importMeta(options) });
}

/**
 * The ref importCheckpoint gives a folder holding these files (by path, as the store's
 * manifest lists them): a folder imported again is known before anything is checked or stored.
 */
export function importedRef(files: CheckpointManifest["files"], options: ImportOptions): CheckpointRef {
  return checkpointRef(sha256Hex(encodeManifest(newManifest({ kind: options.kind, meta: importMeta(options) }, files))));
}

function importMeta(options: ImportOptions): Record<string, unknown> {
  const meta: Record<string, unknown> = {};
  if (options.kind === KIND.adapter) {
    const { uri, digest } = parentOf(options).ref;
    meta.parent = { uri, digest };
  }
  if (options.name) meta.name = options.name;
  return meta;
}

function parentOf(options: ImportOptions): NonNullable<ImportOptions["parent"]> {
  if (!options.parent) throw new TypeError("an adapter import needs its parent");
  return options.parent;
}

/** The Llama config of the model at the root of a checkpoint's lineage: what an adapter over it must fit. */
export async function rootModelConfig(store: CheckpointStore, ref: CheckpointRef): Promise<LlamaConfig> {
  const [root] = await lineageOf(store, ref);
  const manifest = await store.readManifest(root);
  if (manifest.kind !== KIND.model) throw new CheckpointFormatError(`the lineage of ${ref.uri} starts at a ${manifest.kind}, not a model`);
  const { dir } = await store.get(root);
  return parseLlamaConfig(readJsonObject(join(dir, CONFIG_FILE)));
}
