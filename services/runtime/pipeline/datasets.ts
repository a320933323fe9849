/**
 * Dataset references as the contracts make them: a builtin dataset by name and settings,
 * or a JSONL/JSON file in the store. Training data is read strictly: the first bad row
 * fails with its file and line, rather than training on part of what the user sent.
 */
import { loadBuiltin } from "../data/builtin.ts";
import { DatasetError } from "../data/dataset-error.ts";
import { DEFAULT_MAX_FILE_BYTES, parseDataset } from "../data/loaders.ts";
import type { RowFormat } from "../data/row-formats.ts";
import type { Example } from "../data/template.ts";
import { DEFAULT_SIZES } from "../data/world/index.ts";
import type { CheckpointStore } from "../store/store.ts";
import { StoreObjectTooLargeError } from "../store/store.ts";

export interface BuiltinSource {
  name: string;
  split?: "train" | "test";
  size?: number;
  seed?: number;
  harmfulRatio?: number;
}

export type DatasetSource = { uri: string; format?: RowFormat } | { builtin: BuiltinSource };

/** Default sizes of builtin datasets: the reference's scale (2000 alignment, 500 evaluation, n = 1000 mixes). */
export function defaultBuiltinSize(name: string, split: "train" | "test" = "train"): number {
  if (name.endsWith("-mix")) return 1000;
  switch (name) {
    case "alignment":
      return DEFAULT_SIZES.alignment;
    case "harmful":
      return DEFAULT_SIZES.harmful;
    case "harmful-eval":
      return DEFAULT_SIZES.harmfulEval;
    case "moderation":
      return split === "test" ? DEFAULT_SIZES.moderationTest : DEFAULT_SIZES.moderationTrain;
    case "corpus":
      return DEFAULT_SIZES.corpus;
    default:
      return split === "test" ? DEFAULT_SIZES.taskTest : DEFAULT_SIZES.taskTrain;
  }
}

/** Instruction examples of a dataset; a plain-text builtin (the corpus) is refused here. */
export async function resolveExamples(store: CheckpointStore, source: DatasetSource): Promise<Example[]> {
  if ("builtin" in source) {
    const b = source.builtin;
    const data = loadBuiltin(b.name, {
      split: b.split,
      size: b.size ?? defaultBuiltinSize(b.name, b.split),
      seed: b.seed ?? 0,
      harmfulRatio: b.harmfulRatio ?? (b.name.endsWith("-mix") ? 0.1 : undefined),
    });
    if (data.kind !== "examples") {
      throw new DatasetError("DATASET_INVALID", `builtin dataset "${b.name}" is plain text, not instruction examples`, { field: "name" });
    }
    return data.examples;
  }
  let bytes: Buffer;
  try {
    bytes = await store.readObject(source.uri, { maxBytes: DEFAULT_MAX_FILE_BYTES });
  } catch (err) {
    if (err instanceof StoreObjectTooLargeError) throw new DatasetError("DATASET_TOO_LARGE", err.message, { file: source.uri });
    throw err;
  }
  return parseDataset(bytes, source.uri, { format: source.format });
}
