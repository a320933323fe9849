/**
 * Dataset references as the contracts make them: a builtin dataset by name and settings,
 * or a JSONL/JSON file in the store. Training data is read strictly: the first bad row
 * fails with its file and line, rather than training on part of what the user sent.
 */
import { createHash } from "node:crypto";
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

const DATA = "store://datasets";

/** Whether a store URI names a dataset (stored by digest, or written under a name by a test or an operator). */
export const isDatasetUri = (uri: string): boolean => uri.startsWith(`${DATA}/`);
const HEX = /^[0-9a-f]{64}$/;

/** Where an uploaded dataset's bytes are: `store://datasets/<hex sha256>` (services/datasets/records.ts). */
export const dataUri = (hex: string) => `${DATA}/${hex}`;

/** The hex digest a dataset URI names, or undefined when it is not one. */
export function datasetHex(uri: string): string | undefined {
  const hex = uri.startsWith(`${DATA}/`) ? uri.slice(DATA.length + 1) : "";
  return HEX.test(hex) ? hex : undefined;
}

/** The stored bytes of a dataset named by its digest are not those bytes: the store is damaged. */
export class DatasetCorruptError extends Error {
  readonly reason = "DATASET_CORRUPT";
  constructor(readonly uri: string) {
    super(`the stored bytes of ${uri} do not match its digest`);
    this.name = "DatasetCorruptError";
  }
}

/**
 * Instruction examples of a dataset; a plain-text builtin (the corpus) is refused here. An
 * uploaded dataset's bytes are checked against the digest its uri names, as a download checks
 * them: a damaged store fails the job, it does not train on other data.
 */
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
  const hex = datasetHex(source.uri);
  if (hex !== undefined && createHash("sha256").update(bytes).digest("hex") !== hex) throw new DatasetCorruptError(source.uri);
  return parseDataset(bytes, source.uri, { format: source.format });
}
