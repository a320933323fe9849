/**
 * Datasets in the store: the bytes at store://datasets/<hex sha256>, and a record (the Dataset
 * message as proto JSON) at store://dataset-records/<hex>. The record is written last and
 * removed first, so it is the commit marker: a dataset exists exactly when its record does,
 * and bytes left by an interrupted upload or delete are never visible.
 */
import { clone, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { type Dataset, DatasetSchema } from "../../gen/vaccine/v1/datasets_pb.ts";
import type { Ownership } from "../common/ownership.ts";
import { dataUri } from "../runtime/pipeline/datasets.ts";
import { rpcError } from "../platform/errors.ts";
import { StoreObjectNotFoundError, type CheckpointStore } from "../runtime/store/store.ts";

const RECORDS = "store://dataset-records";
const HEX = /^[0-9a-f]{64}$/;

const recordUri = (hex: string) => `${RECORDS}/${hex}.json`;

/** The dataset's record, or undefined when there is no such dataset. */
export async function readRecord(store: CheckpointStore, hex: string): Promise<Dataset | undefined> {
  let bytes: Buffer;
  try {
    bytes = await store.readObject(recordUri(hex));
  } catch (err) {
    if (err instanceof StoreObjectNotFoundError) return undefined;
    throw err;
  }
  try {
    const dataset = fromJsonString(DatasetSchema, bytes.toString("utf8"));
    if (dataset.uri === dataUri(hex) && dataset.digest === `sha256:${hex}`) return dataset;
  } catch {
    // Reported below, as any record that does not describe its own dataset.
  }
  throw rpcError(Code.DataLoss, "DATASET_RECORD_CORRUPT", `the record of ${dataUri(hex)} is corrupt`, { uri: dataUri(hex) });
}

/**
 * The record as one owner sees it: its own upload's name and time (ownership.ts) in place of
 * the first uploader's, which the record keeps.
 */
export function ownView(dataset: Dataset, ownership: Ownership | undefined): Dataset {
  if (!ownership || ownership.displayName === undefined) return dataset;
  const view = clone(DatasetSchema, dataset);
  view.displayName = ownership.displayName;
  if (ownership.createTime) view.createTime = timestampFromDate(new Date(ownership.createTime));
  return view;
}

/** Makes a dataset visible; its bytes must already be stored. */
export async function writeRecord(store: CheckpointStore, hex: string, dataset: Dataset): Promise<void> {
  await store.putObject(recordUri(hex), Buffer.from(toJsonString(DatasetSchema, dataset)));
}

/** Hides a dataset, then removes its bytes. */
export async function deleteDataset(store: CheckpointStore, hex: string): Promise<void> {
  await store.deleteObject(recordUri(hex));
  await store.deleteObject(dataUri(hex));
}

export interface RecordEntry {
  hex: string;
  /** When the record was written, in ms: the listing order. */
  time: number;
}

/** Every dataset, newest first (ties by digest, so the order is total and pages are stable). */
export async function listRecords(store: CheckpointStore): Promise<RecordEntry[]> {
  const entries: RecordEntry[] = [];
  for (const object of await store.listObjects(RECORDS)) {
    const hex = object.uri.slice(RECORDS.length + 1, -".json".length);
    if (object.uri === recordUri(hex) && HEX.test(hex)) entries.push({ hex, time: object.modified.getTime() });
  }
  return entries.sort(newestFirst);
}

function newestFirst(a: RecordEntry, b: RecordEntry): number {
  return b.time - a.time || (a.hex < b.hex ? 1 : a.hex > b.hex ? -1 : 0);
}
