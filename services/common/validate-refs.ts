/** Request checks for the references every service takes: checkpoints and datasets. */
import type { CheckpointRef, DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import type { RequestValidator } from "../platform/validate.ts";
import { checkpointHexOf } from "../runtime/store/store.ts";

const DIGEST = /^sha256:[0-9a-f]{64}$/;
/** Longest URI a request may name (URIs end up in errors and logs). */
export const MAX_URI_LENGTH = 2048;

/** A CheckpointRef: both the URI and a well-formed digest are required. */
export function checkCheckpointRef(v: RequestValidator, field: string, ref: CheckpointRef | undefined, required = true): void {
  if (!ref) {
    if (required) v.fail(field, "is required");
    return;
  }
  v.required(`${field}.uri`, ref.uri);
  v.length(`${field}.uri`, ref.uri, MAX_URI_LENGTH);
  if (!DIGEST.test(ref.digest)) v.fail(`${field}.digest`, 'must be "sha256:" followed by 64 lowercase hex digits');
  else {
    // A stored checkpoint's URI names its digest (store.ts, checkpointRef).
    const named = checkpointHexOf(ref.uri);
    if (named && `sha256:${named}` !== ref.digest) v.fail(`${field}.digest`, `must be the digest its uri names, sha256:${named}`);
  }
}

/** A DatasetRef: a store URI or a builtin dataset with sane generator settings. */
export function checkDatasetRef(v: RequestValidator, field: string, ref: DatasetRef | undefined, required = true): void {
  const source = ref?.source;
  if (!source || source.case === undefined) {
    if (required) v.fail(field, "needs a uri or a builtin dataset");
    return;
  }
  if (source.case === "uri") {
    v.required(`${field}.uri`, source.value);
    v.length(`${field}.uri`, source.value, MAX_URI_LENGTH);
    return;
  }
  const b = source.value;
  v.required(`${field}.builtin.name`, b.name);
  v.length(`${field}.builtin.name`, b.name, 256);
  v.number(`${field}.builtin.size`, b.size, { min: 1, max: 1_000_000, integer: true });
  v.number(`${field}.builtin.harmful_ratio`, b.harmfulRatio, { min: 0, max: 1 });
}
