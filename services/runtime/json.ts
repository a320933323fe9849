/** Small JSON helpers shared by the file formats and the store. */
import { readFileSync, statSync } from "node:fs";
import { basename } from "node:path";
import { CheckpointFormatError, fileReadError } from "./format-error.ts";

/** A JSON object (not null, not an array). */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Largest JSON file of a checkpoint (config, index, tokenizer) read whole: several times the
 * largest real tokenizer.json, so a hostile upload cannot make a reader buffer gigabytes.
 */
export const MAX_JSON_FILE_BYTES = 128 * 1024 * 1024;

/**
 * A JSON file of a checkpoint that must hold an object (config, index, tokenizer); any
 * failure is a CheckpointFormatError naming `file`, its name in the folder.
 */
export function readJsonObject(path: string, file: string = basename(path)): Record<string, unknown> {
  let text: string;
  try {
    const { size } = statSync(path);
    if (size > MAX_JSON_FILE_BYTES) throw new CheckpointFormatError(`is ${size} bytes, more than the ${MAX_JSON_FILE_BYTES} a JSON file of a checkpoint may have`, file);
    text = readFileSync(path, "utf8");
  } catch (err) {
    if (err instanceof CheckpointFormatError) throw err;
    throw fileReadError(err, file);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CheckpointFormatError(`not valid JSON: ${(err as Error).message}`, file);
  }
  if (!isPlainObject(value)) throw new CheckpointFormatError("not a JSON object", file);
  return value;
}
