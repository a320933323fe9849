/**
 * Runtime errors as RPC errors: each typed error of the runtime (store, checkpoint
 * formats, datasets, training) gets its gRPC code and keeps its reason as the ErrorInfo
 * reason. Anything else is INTERNAL, with the message kept for the operator.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { CheckpointFormatError, CheckpointKindError } from "../runtime/format-error.ts";
import { DatasetError } from "../runtime/data/dataset-error.ts";
import { MixtureError } from "../runtime/data/mixture.ts";
import { DatasetCorruptError, isDatasetUri } from "../runtime/pipeline/datasets.ts";
import {
  CheckpointIntegrityError,
  CheckpointNotFoundError,
  InvalidStoreUriError,
  StoreError,
  StoreObjectNotFoundError,
  StorePathEscapeError,
} from "../runtime/store/store.ts";
import { NoTrainingTokensError, TrainingDivergedError } from "../runtime/train/loop.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";

export interface ErrorContext {
  /** The request field a dataset came from (e.g. "spec.dataset"), for BadRequest. */
  datasetField?: string;
  /** The request field a checkpoint came from. */
  checkpointField?: string;
}

export function toRpcError(err: unknown, ctx: ErrorContext = {}): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DatasetError || err instanceof MixtureError) {
    const reason = err instanceof DatasetError ? err.reason : "DATASET_INVALID";
    const d = err instanceof DatasetError ? err.details : { field: err.field };
    const field = [ctx.datasetField, d.field && !d.file ? `builtin.${snake(d.field)}` : undefined].filter(Boolean).join(".") || "dataset";
    const metadata: Record<string, string> = { field };
    if (d.file) metadata.file = d.file;
    if (d.line !== undefined) metadata.line = String(d.line);
    // A file's bad rows: one violation per row, named by its line.
    const rows = "rows" in d ? d.rows : undefined;
    if (rows?.length) metadata.invalid_rows = String(d.invalidRows ?? rows.length);
    const fieldViolations = rows?.length
      ? rows.map((r) => ({ field: `line ${r.line}`, description: r.reason }))
      : [{ field, description: err.message }];
    return rpcError(Code.InvalidArgument, reason, err.message, metadata, [{ desc: BadRequestSchema, value: { fieldViolations } }]);
  }
  if (err instanceof DatasetCorruptError) return rpcError(Code.DataLoss, err.reason, err.message, { uri: err.uri });
  // A stored dataset a request names is DATASET_NOT_FOUND, as DatasetService says of one.
  if (err instanceof StoreObjectNotFoundError && isDatasetUri(err.uri)) {
    return rpcError(Code.NotFound, "DATASET_NOT_FOUND", `dataset ${err.message}`, { ...fieldOf(ctx.datasetField ?? ctx.checkpointField), uri: err.uri });
  }
  if (err instanceof CheckpointNotFoundError || err instanceof StoreObjectNotFoundError) {
    return rpcError(Code.NotFound, err.reason, err.message, fieldOf(ctx.checkpointField ?? ctx.datasetField));
  }
  if (err instanceof InvalidStoreUriError || err instanceof StorePathEscapeError) {
    const field = ctx.checkpointField ?? ctx.datasetField;
    // Without a field the ref was the server's own, never a client's.
    return field ? invalidArgument([{ field, description: err.message }], err.reason, { field }) : rpcError(Code.InvalidArgument, err.reason, err.message);
  }
  if (err instanceof CheckpointIntegrityError) return rpcError(Code.DataLoss, err.reason, err.message);
  if (err instanceof StoreError) return rpcError(Code.Unavailable, err.reason, err.message);
  if (err instanceof CheckpointKindError) return rpcError(Code.FailedPrecondition, err.reason, err.message, fieldOf(ctx.checkpointField));
  if (err instanceof CheckpointFormatError) return rpcError(Code.FailedPrecondition, err.reason, err.message);
  if (err instanceof TrainingDivergedError) {
    return rpcError(Code.FailedPrecondition, err.reason, `${err.message}; lower the learning rate, or grad_clip (the gradient norm each step may have)`, {
      step: String(err.step),
      loss: String(err.loss),
    });
  }
  if (err instanceof NoTrainingTokensError) {
    return rpcError(Code.FailedPrecondition, err.reason, `${err.message}; raise training.max_sequence_length or shorten the prompts`, {
      field: "spec.training.max_sequence_length",
      max_sequence_length: String(err.maxSequenceLength),
    });
  }
  // A full disk or quota (the store, the jobs folder, temp files) is the operator's to free, not
  // a bug; its message would name the server's paths.
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (errno === "ENOSPC" || errno === "EDQUOT") {
    return rpcError(Code.ResourceExhausted, "STORAGE_FULL", `the server's disk is full (${errno}); nothing was stored: retry once space is freed`, { errno });
  }
  return rpcError(Code.Internal, "INTERNAL", err instanceof Error ? err.message : String(err));
}

function fieldOf(field: string | undefined): Record<string, string> {
  return field ? { field } : {};
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
