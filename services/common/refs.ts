/**
 * References from the contracts to the runtime: a CheckpointRef or DatasetRef message
 * as the runtime's plain types. Embed, Score and the training jobs all take them.
 */
import type { DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import { DatasetFormat, DatasetSplit } from "../../gen/vaccine/v1/common_pb.ts";
import type { RowFormat } from "../runtime/data/row-formats.ts";
import type { DatasetSource } from "../runtime/pipeline/datasets.ts";
import type { CheckpointRef } from "../runtime/store/store.ts";

const FORMATS: Record<DatasetFormat, RowFormat | undefined> = {
  [DatasetFormat.UNSPECIFIED]: undefined,
  [DatasetFormat.ALPACA]: "alpaca",
  [DatasetFormat.BEAVERTAILS]: "beavertails",
  [DatasetFormat.REFUSAL]: "refusal",
  [DatasetFormat.SST2]: "sst2",
  [DatasetFormat.AGNEWS]: "agnews",
  [DatasetFormat.GSM8K]: "gsm8k",
};

/** The runtime's row format of a contract format; undefined for UNSPECIFIED (detect) and unknown values. */
export function rowFormatOf(format: DatasetFormat): RowFormat | undefined {
  return FORMATS[format];
}

/** Whether a contract format is one this server knows (UNSPECIFIED included). */
export function isKnownFormat(format: DatasetFormat): boolean {
  return Object.hasOwn(FORMATS, format);
}

/** The contract format of a runtime row format. */
export function datasetFormatOf(format: RowFormat): DatasetFormat {
  return Number(Object.entries(FORMATS).find(([, f]) => f === format)![0]) as DatasetFormat;
}


export function checkpointRefOf(ref: { uri: string; digest: string } | undefined): CheckpointRef {
  return { uri: ref?.uri ?? "", digest: ref?.digest ?? "" };
}

export function datasetSource(ref: DatasetRef | undefined): DatasetSource {
  const source = ref?.source;
  if (source?.case === "uri") return { uri: source.value, format: rowFormatOf(ref!.format) };
  const b = source?.case === "builtin" ? source.value : undefined;
  return {
    builtin: {
      name: b?.name ?? "",
      split: b?.split === DatasetSplit.TEST ? "test" : "train",
      size: b?.size,
      seed: b?.seed,
      harmfulRatio: b?.harmfulRatio,
    },
  };
}
