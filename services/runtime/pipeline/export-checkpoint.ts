/**
 * Checkpoints out of the store in the formats serving stacks load:
 * - merged: the root model with every adapter of the lineage merged in, in lineage order
 *   (W' = W + (B A) * alpha / r per adapter, float32, as loadCheckpoint merges), as one
 *   plain Hugging Face Llama folder (config.json, model.safetensors, tokenizer files);
 * - peft: the checkpoint's own adapter as a PEFT folder;
 * - stored: the stored files unchanged.
 * Weights are written tensor by tensor into a folder the caller provides (one tensor in
 * memory at a time), and the caller streams the files from there and removes it; float32
 * values are rounded to nearest even for F16 and BF16.
 */
import { copyFile, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  CONFIG_FILE,
  GENERATION_CONFIG_FILE,
  TOKENIZER_CONFIG_FILE,
  TOKENIZER_FILE,
  WEIGHTS_FILE,
  writeJson,
} from "../checkpoint/hf-folder.ts";
import { checkLlamaFolder } from "../checkpoint/llama-folder.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, fromPeftConfig, inspectPeftFolder, readPeftFolder } from "../checkpoint/peft-folder.ts";
import { readSafetensors, readTensor, writeSafetensorsFile, type FloatDtype } from "../checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../format-error.ts";
import type { HostTensor } from "../host-tensor.ts";
import { llamaWeightShapes } from "../model/llama.ts";
import { mergeLoraWeight } from "../model/lora.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND } from "./kinds.ts";
import { lineageOf } from "./load.ts";

export type ExportFormat = "merged" | "peft" | "stored";

/** A checkpoint that cannot take the requested format (a PEFT export of a model, a merge of a classifier). */
export class ExportPreconditionError extends Error {
  readonly reason = "EXPORT_NOT_POSSIBLE";
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** An export's files by path relative to the exported folder, sorted, with where to read them. */
export type ExportedFile = { path: string; source: string; size: number };

/** The config.json torch_dtype of each element type. */
const TORCH_DTYPES: Record<FloatDtype, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

/** Files beside the weights that a merged export carries over from the root model when present. */
const MODEL_SIDE_FILES = [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, "special_tokens_map.json", "tokenizer.model", GENERATION_CONFIG_FILE];

/**
 * Writes a merged or PEFT export into `out` (an empty folder the caller owns), or for
 * "stored" points at the store's verified copy, and lists the files.
 */
export async function exportCheckpoint(store: CheckpointStore, ref: CheckpointRef, format: ExportFormat, out: string, dtype: FloatDtype = "F32"): Promise<ExportedFile[]> {
  if (format === "stored") {
    const { dir, manifest } = await store.get(ref);
    return Object.entries(manifest.files)
      .map(([path, { size }]) => ({ path, source: join(dir, ...path.split("/")), size }))
      .sort((a, b) => (a.path < b.path ? -1 : 1));
  }
  const written = format === "merged" ? await writeMerged(store, ref, out, dtype) : await writePeft(store, ref, out, dtype);
  const files: ExportedFile[] = [];
  for (const path of written.sort()) files.push({ path, source: join(out, path), size: (await stat(join(out, path))).size });
  return files;
}

async function writeMerged(store: CheckpointStore, ref: CheckpointRef, out: string, dtype: FloatDtype): Promise<string[]> {
  const lineage = await lineageOf(store, ref);
  const rootKind = (await store.readManifest(lineage[0])).kind;
  if (rootKind !== KIND.model) throw new ExportPreconditionError(`${ref.uri} is a ${rootKind} checkpoint, not a language model: only the stored files can be exported`);
  const { dir: rootDir } = await store.get(lineage[0]);
  const { config, inventory } = await checkLlamaFolder(rootDir);

  // Every adapter's pairs by projection, in lineage order (the order loadCheckpoint merges in).
  const updates = new Map<string, { a: HostTensor; b: HostTensor; scaling: number }[]>();
  for (const adapterRef of lineage.slice(1)) {
    const { dir } = await store.get(adapterRef);
    const folder = await readPeftFolder(dir);
    const lora = fromPeftConfig(folder.config);
    for (const { module, a, b } of folder.pairs) {
      const list = updates.get(module) ?? [];
      list.push({ a, b, scaling: lora.alpha / lora.r });
      updates.set(module, list);
    }
  }

  const shapes = llamaWeightShapes(config);
  const stray = [...updates.keys()].find((module) => !shapes.has(`${module}.weight`));
  if (stray) throw new CheckpointFormatError(`an adapter in the lineage of ${ref.uri} adapts ${stray}, which its root model does not have`);
  const plans = [...shapes].map(([name, shape]) => ({ name, shape }));
  const values = async (name: string): Promise<Float32Array> => {
    const entry = inventory.tensors.get(name)!;
    let tensor = await readTensor(join(rootDir, entry.file), inventory.headers.get(entry.file)!, entry);
    for (const { a, b, scaling } of updates.get(name.replace(/\.weight$/, "")) ?? []) tensor = mergeLoraWeight(tensor, a, b, scaling);
    return tensor.data;
  };
  // A tied model's head is the embedding: llamaWeightShapes leaves lm_head out, as HF saves it.
  await writeSafetensorsFile(join(out, WEIGHTS_FILE), plans, values, { dtype, metadata: { format: "pt" } });
  await writeJson(join(out, CONFIG_FILE), { ...inventory.config, torch_dtype: TORCH_DTYPES[dtype] });
  const written = [CONFIG_FILE, WEIGHTS_FILE];
  for (const file of MODEL_SIDE_FILES) {
    const copied = await copyFile(join(rootDir, file), join(out, file)).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") return false;
        throw err;
      },
    );
    if (copied) written.push(file);
  }
  return written;
}

async function writePeft(store: CheckpointStore, ref: CheckpointRef, out: string, dtype: FloatDtype): Promise<string[]> {
  const manifest = await store.readManifest(ref);
  if (manifest.kind !== KIND.adapter) {
    throw new ExportPreconditionError(`${ref.uri} is a ${manifest.kind} checkpoint; only an adapter exports as a PEFT folder`);
  }
  const { dir } = await store.get(ref);
  const { header } = await inspectPeftFolder(dir);
  await copyFile(join(dir, ADAPTER_CONFIG_FILE), join(out, ADAPTER_CONFIG_FILE));
  if (header.entries.every((e) => e.dtype === dtype)) {
    // Already in the requested type: the stored bytes, so a re-import gives the same digest.
    await copyFile(join(dir, ADAPTER_WEIGHTS_FILE), join(out, ADAPTER_WEIGHTS_FILE));
  } else {
    const { tensors, metadata } = await readSafetensors(join(dir, ADAPTER_WEIGHTS_FILE));
    const plans = [...tensors].map(([name, t]) => ({ name, shape: t.shape }));
    await writeSafetensorsFile(join(out, ADAPTER_WEIGHTS_FILE), plans, async (name) => tensors.get(name)!.data, { dtype, metadata });
  }
  return [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE];
}
