/**
 * Loads user dataset files (JSON Lines, or a JSON array) in the formats people have
 * (row-formats.ts), strictly: one bad row refuses the whole file, so nothing trains on part
 * of what the user sent or on a row that was silently coerced. The rows go through the
 * same DatasetReader as uploads.
 */
import { DatasetError } from "./dataset-error.ts";
import { DatasetReader, type ReadSummary } from "./dataset-reader.ts";
import type { RowFormat } from "./row-formats.ts";
import type { Example } from "./template.ts";

/** Largest dataset file read whole for training. */
export const DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024;

/** The examples of a dataset file's bytes; `file` names the source in errors. */
export function parseDataset(bytes: Uint8Array, file: string, options: { format?: RowFormat | "auto" } = {}): Example[] {
  const examples: Example[] = [];
  const reader = new DatasetReader({ format: options.format, onExample: (example) => examples.push(example) });
  reader.push(bytes);
  checkRead(reader.end(), file);
  return examples;
}

/**
 * Throws the DatasetError a read stands for: DATASET_INVALID naming the first bad row's
 * line (and carrying the rows kept), or DATASET_EMPTY for a file without rows.
 */
export function checkRead(summary: ReadSummary, file: string): void {
  if (summary.errorCount > 0) {
    const first = summary.errors[0];
    const more = summary.errorCount > 1 ? ` (and ${summary.errorCount - 1} more bad rows)` : "";
    throw new DatasetError("DATASET_INVALID", `${file}:${first.line}: ${first.reason}${more}`, {
      file,
      line: first.line,
      field: first.field,
      rows: summary.errors,
      invalidRows: summary.errorCount,
    });
  }
  if (summary.rows === 0) throw new DatasetError("DATASET_EMPTY", `${file}: the file has no rows`, { file });
}
