/**
 * What Embed and Score calls share: a checkpoint held loaded for the call, and the
 * mapping of the runtime's errors in those calls to RPC errors.
 */
import { Code } from "@connectrpc/connect";
import { DriftPreconditionError } from "../runtime/pipeline/drift.ts";
import { EmbedRequestError } from "../runtime/pipeline/hidden-states.ts";
import type { LoadedCheckpoint } from "../runtime/pipeline/load.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import type { SuiteDeps } from "./deps.ts";
import { assertCheckpointReadable, type Scope } from "./ownership.ts";
import { checkpointRefOf } from "./refs.ts";
import { toRpcError } from "./runtime-errors.ts";

/** Runtime errors of a call as RPC errors; `field` names the checkpoint or dataset at fault. */
export function mapCallError(err: unknown, field: string): never {
  if (err instanceof EmbedRequestError) throw invalidArgument(err.violations);
  if (err instanceof DriftPreconditionError) throw rpcError(Code.FailedPrecondition, "CHECKPOINTS_INCOMPARABLE", err.message);
  throw toRpcError(err, { checkpointField: field, datasetField: field });
}

/**
 * Runs fn on a loaded checkpoint; a missing one, or one the caller's tenant may not read
 * (`scope`, ownership.ts), is NOT_FOUND naming `field`.
 */
export function withCheckpoint<R>(
  deps: SuiteDeps,
  field: string,
  ref: { uri: string; digest: string } | undefined,
  fn: (loaded: LoadedCheckpoint) => R | Promise<R>,
  scope?: Scope,
): Promise<R> {
  const r = checkpointRefOf(ref);
  return assertCheckpointReadable(deps, scope, r)
    .then(() => deps.checkpoints.use(r, fn))
    .catch((err) => mapCallError(err, field));
}
