/** The typed error every dataset source raises (built-in, files, mixtures), for mapping to gRPC status details. */
import type { RowError } from "./dataset-reader.ts";

export type DatasetErrorReason = "DATASET_UNKNOWN" | "DATASET_INVALID" | "DATASET_TOO_LARGE" | "DATASET_EMPTY";

export interface DatasetErrorDetails {
  field?: string;
  file?: string;
  /** The first bad row's line. */
  line?: number;
  /** The bad rows of a file, as many as were kept (a file's read keeps the first 100). */
  rows?: RowError[];
  /** Every bad row, including those not kept. */
  invalidRows?: number;
}

export class DatasetError extends Error {
  constructor(
    readonly reason: DatasetErrorReason,
    message: string,
    readonly details: DatasetErrorDetails = {},
  ) {
    super(message);
    this.name = "DatasetError";
  }
  get field(): string | undefined {
    return this.details.field;
  }
  get file(): string | undefined {
    return this.details.file;
  }
  get line(): number | undefined {
    return this.details.line;
  }
}
