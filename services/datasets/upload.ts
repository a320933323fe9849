/**
 * UploadDataset: the metadata message, then chunks streamed to a temp file while they are
 * hashed, counted against the size limit and validated row by row (DatasetReader: memory
 * holds one row, never the file). Only a complete, valid upload reaches the store; any
 * failure, cancellation or disconnect removes the temp file before the call ends.
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import {
  type Dataset,
  DatasetEncoding,
  DatasetSchema,
  type DatasetUploadMetadata,
  type UploadDatasetRequest,
} from "../../gen/vaccine/v1/datasets_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { datasetFormatOf, isKnownFormat, rowFormatOf } from "../common/refs.ts";
import { dataUri } from "../runtime/pipeline/datasets.ts";
import { claim, ownershipOf, owns, type Scope } from "../common/ownership.ts";
import { reserveStoredBytes, streamedBytesCheck } from "../common/quotas.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { callCancelledError } from "../platform/aborted-calls.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import { notAChunk, RequestValidator } from "../platform/validate.ts";
import { DatasetReader, type DatasetEncoding as Encoding } from "../runtime/data/dataset-reader.ts";
import { checkRead } from "../runtime/data/loaders.ts";
import { ownView, readRecord, writeRecord } from "./records.ts";
import { Spool } from "./spool.ts";

/** The contract's bound on one chunk message. */
export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;
const MAX_DISPLAY_NAME = 256;

const ENCODINGS: Record<DatasetEncoding, Encoding | "auto"> = {
  [DatasetEncoding.UNSPECIFIED]: "auto",
  [DatasetEncoding.JSONL]: "jsonl",
  [DatasetEncoding.JSON_ARRAY]: "json-array",
};

/**
 * With tenancy (`scope`) the dataset is claimed for the caller's tenant, after its byte
 * quota is checked: a refused upload stores nothing. `cancelled` is asked just before
 * anything is stored or claimed: a call cancelled by then stores nothing either.
 */
export async function uploadDataset(
  deps: SuiteDeps,
  spoolDir: string,
  requests: AsyncIterable<UploadDatasetRequest>,
  scope: Scope | undefined,
  cancelled: () => boolean,
): Promise<Dataset> {
  const messages = requests[Symbol.asyncIterator]();
  const first = await messages.next();
  const metadata = checkMetadata(first.done ? undefined : first.value);
  const limit = deps.uploads.maxDatasetBytes;
  const reader = new DatasetReader({ format: rowFormatOf(metadata.format) ?? "auto", encoding: ENCODINGS[metadata.encoding] });
  const admitted = await streamedBytesCheck(deps, scope?.tenant, "datasets");
  const spool = await Spool.create(spoolDir);
  let reservation: { release(): Promise<void> } | undefined;
  try {
    for (let next = await messages.next(); !next.done; next = await messages.next()) {
      const content = next.value.content;
      if (content.case !== "chunk") {
        throw notAChunk(content.case);
      }
      const chunk = content.value;
      if (chunk.byteLength > MAX_CHUNK_BYTES) {
        throw invalidArgument([{ field: "chunk", description: `is ${chunk.byteLength} bytes; at most ${MAX_CHUNK_BYTES} per message` }]);
      }
      spool.count(chunk);
      if (spool.size > limit) {
        throw rpcError(Code.ResourceExhausted, "DATASET_TOO_LARGE", `the upload is over the ${limit}-byte dataset limit`, { limit_bytes: String(limit) });
      }
      await admitted(spool.size);
      reader.push(chunk);
      // Once a row is bad nothing will be stored: keep validating, stop writing.
      if (reader.errorCount === 0) await spool.write(chunk);
    }
    const summary = reader.end();
    const hex = spool.digest();
    if (metadata.expectedSha256 && metadata.expectedSha256 !== hex) {
      throw invalidArgument([{ field: "metadata.expected_sha256", description: `does not match the bytes received (sha256 ${hex})` }], "DATASET_DIGEST_MISMATCH", {
        expected_sha256: metadata.expectedSha256,
        actual_sha256: hex,
      });
    }
    try {
      checkRead(summary, metadata.displayName || "upload");
    } catch (err) {
      throw toRpcError(err, { datasetField: "chunk" });
    }
    const owned = scope ? await owns(deps.store, scope.tenant, "datasets", hex) : true;
    // Held until the claim below charges the bytes (quotas.ts).
    if (!owned) reservation = await reserveStoredBytes(deps, scope!.tenant, spool.size);
    const ownership = { bytes: spool.size, displayName: metadata.displayName, createTime: new Date().toISOString() };
    const existing = await readRecord(deps.store, hex);
    if (cancelled()) throw callCancelledError();
    if (existing) {
      if (owned) return scope ? ownView(existing, await ownershipOf(deps.store, scope.tenant, "datasets", hex)) : existing;
      // Stored already by another tenant: this one owns it too, under its own name.
      await claim(deps.store, scope!.tenant, "datasets", hex, ownership);
      return ownView(existing, ownership);
    }
    await deps.store.putObjectFile(dataUri(hex), spool.path);
    const dataset = create(DatasetSchema, {
      uri: dataUri(hex),
      digest: `sha256:${hex}`,
      displayName: metadata.displayName,
      format: datasetFormatOf(summary.format!),
      encoding: summary.encoding === "json-array" ? DatasetEncoding.JSON_ARRAY : DatasetEncoding.JSONL,
      rowCount: BigInt(summary.rows),
      sizeBytes: BigInt(spool.size),
      createTime: timestampNow(),
    });
    // Claimed before the record makes it visible: no moment where it exists unowned.
    if (scope) await claim(deps.store, scope.tenant, "datasets", hex, ownership);
    await writeRecord(deps.store, hex, dataset);
    return dataset;
  } finally {
    await reservation?.release();
    await spool.remove();
  }
}

function checkMetadata(first: UploadDatasetRequest | undefined): DatasetUploadMetadata {
  const metadata = first?.content.case === "metadata" ? first.content.value : undefined;
  if (!metadata) throw invalidArgument([{ field: "metadata", description: "is required, as the first message" }]);
  const v = new RequestValidator();
  if (metadata.displayName.length > MAX_DISPLAY_NAME) v.fail("metadata.display_name", `is longer than ${MAX_DISPLAY_NAME} characters`);
  if (!isKnownFormat(metadata.format)) v.fail("metadata.format", `${metadata.format} is not a known DatasetFormat`);
  if (!Object.hasOwn(ENCODINGS, metadata.encoding)) v.fail("metadata.encoding", `${metadata.encoding} is not a known DatasetEncoding`);
  if (metadata.expectedSha256 !== "" && !/^[0-9a-f]{64}$/.test(metadata.expectedSha256)) {
    v.fail("metadata.expected_sha256", "must be 64 lowercase hex digits, or empty");
  }
  v.check();
  return metadata;
}
