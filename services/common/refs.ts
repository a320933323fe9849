/**
 * References from the contracts to the runtime: a CheckpointRef or DatasetRef message
 * as the runtime's plain types. Embed, Score and the training jobs all take them.
 */
import type { ReflectMessage } from "@bufbuild/protobuf/reflect";
import type { CheckpointRef as CheckpointRefMessage, DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import { CheckpointRefSchema, DatasetFormat, DatasetRefSchema, DatasetSplit } from "../../gen/vaccine/v1/common_pb.ts";
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

/** Every CheckpointRef and DatasetRef set in a message, at any depth, with its field path below `prefix`. */
export function* refsIn(m: ReflectMessage, prefix: string): Generator<{ path: string; ref: CheckpointRefMessage | DatasetRef }> {
  const isRef = (typeName: string) => typeName === CheckpointRefSchema.typeName || typeName === DatasetRefSchema.typeName;
  for (const f of m.fields) {
    if (!m.isSet(f)) continue;
    const path = `${prefix}.${f.name}`;
    if (f.fieldKind === "message") {
      const v = m.get(f);
      if (isRef(f.message.typeName)) yield { path, ref: v.message as CheckpointRefMessage | DatasetRef };
      else yield* refsIn(v, path);
    } else if (f.fieldKind === "list" && f.listKind === "message") {
      let i = 0;
      for (const v of m.get(f)) {
        const item = v as ReflectMessage;
        if (isRef(f.message.typeName)) yield { path: `${path}[${i}]`, ref: item.message as CheckpointRefMessage | DatasetRef };
        else yield* refsIn(item, `${path}[${i}]`);
        i++;
      }
    }
  }
}
