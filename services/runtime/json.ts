/** Small JSON helpers shared by the file formats and the store (no dependencies). */

/** A JSON object (not null, not an array). */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Largest JSON file of a checkpoint (config, index, tokenizer) read whole: several times the
 * largest real tokenizer.json, so a hostile upload cannot make a reader buffer gigabytes.
 */
export const MAX_JSON_FILE_BYTES = 128 * 1024 * 1024;
