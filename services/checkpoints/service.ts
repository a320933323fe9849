import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.ts";
import {
  type Checkpoint,
  type CheckpointImportMetadata,
  CheckpointSchema,
  CheckpointService,
  CheckpointType,
  type ExportCheckpointResponse,
  ExportCheckpointResponseSchema,
  ExportFormat,
  type ImportCheckpointRequest,
  TensorDtype,
} from "../../gen/vaccine/v1/checkpoints_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import {
  assertCheckpointReadable,
  canReadCheckpoint,
  checkpointBytes,
  claim,
  isBuiltin,
  ownedBy,
  owns,
  release,
  releaseAll,
  scopeOf,
  visibleTenant,
  type Scope,
} from "../common/ownership.ts";
import { reserveStoredBytes, streamedBytesCheck } from "../common/quotas.ts";
import { checkpointRefOf } from "../common/refs.ts";
import { principalOf } from "../platform/principal.ts";
import { callCancelled, callCancelledError, untilAborted } from "../platform/aborted-calls.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { checkCheckpointRef } from "../common/validate-refs.ts";
import { assertNoJobUses } from "../common/jobs-using.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator, checkPage, keyToken, pageByKey, timeKey, tokenKey } from "../platform/validate.ts";
import type { FloatDtype } from "../runtime/checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../runtime/format-error.ts";
import { CheckpointDescriber, type CheckpointDescription } from "../runtime/pipeline/describe-checkpoint.ts";
import { ExportPreconditionError, exportCheckpoint, type ExportedFile, type ExportFormat as Format } from "../runtime/pipeline/export-checkpoint.ts";
import { ADAPTER_PARENT_KINDS, importCheckpoint, importedRef, rootModelConfig } from "../runtime/pipeline/import-checkpoint.ts";
import { KIND } from "../runtime/pipeline/kinds.ts";
import { childrenOf } from "../runtime/pipeline/load.ts";
import { checkpointHex, CheckpointIntegrityError, type CheckpointRef } from "../runtime/store/store.ts";
import { receiveFolder } from "./receive-folder.ts";
import { WorkDirs } from "./work-dirs.ts";

const MAX_DISPLAY_NAME = 256;
/** Export chunks stay well under the 4 MiB message bound clients assume. */
const EXPORT_CHUNK_BYTES = 1024 * 1024;

/**
 * Responses go uncompressed whatever the client accepts (connect-node and grpcio accept
 * gzip by default): gzip saves about 7% of F32 weights and made exports several times
 * slower (bench/README.md). compressMinBytes applies to responses only: compressed imports
 * are still accepted.
 */
const HANDLER_OPTIONS = { compressMinBytes: Number.MAX_SAFE_INTEGER };

const TYPE_OF_KIND: Record<string, CheckpointType> = {
  [KIND.model]: CheckpointType.BASE_MODEL,
  [KIND.adapter]: CheckpointType.ADAPTER,
  [KIND.trainingState]: CheckpointType.TRAINING_STATE,
  [KIND.moderation]: CheckpointType.MODERATION_MODEL,
};
const FORMATS: Record<ExportFormat, Format | undefined> = {
  [ExportFormat.UNSPECIFIED]: undefined,
  [ExportFormat.MERGED]: "merged",
  [ExportFormat.PEFT_ADAPTER]: "peft",
  [ExportFormat.AS_STORED]: "stored",
};
const DTYPES: Record<TensorDtype, FloatDtype | undefined> = {
  [TensorDtype.UNSPECIFIED]: undefined,
  [TensorDtype.F32]: "F32",
  [TensorDtype.F16]: "F16",
  [TensorDtype.BF16]: "BF16",
};

export interface CheckpointServiceOptions {
  /** Where imports and exports in progress live (default: <os tmpdir>/vaccine-checkpoints). */
  workDir?: string;
}

/**
 * CheckpointService: streamed imports of Hugging Face Llama folders and PEFT adapters,
 * validated completely before they are stored; descriptions; exports merged, as PEFT
 * folders or as stored. Display names live in the manifest's meta (meta.name, as the
 * built-in checkpoints have it), so they are part of the digest: the same files under the
 * same name import to the same checkpoint. Create times are the store's commit times.
 */
export function checkpointService(deps: SuiteDeps, options: CheckpointServiceOptions = {}): ServiceModule {
  const work = new WorkDirs(options.workDir ?? join(tmpdir(), "vaccine-checkpoints"));
  // Temp folders of a process that crashed mid-import or mid-export.
  void work.sweep().catch((err: unknown) => deps.logger.warn({ err, dir: work.root }, "could not sweep checkpoint temp folders"));
  const describer = new CheckpointDescriber(deps.store);

  /**
   * The checkpoint as the caller may see it: one its tenant may not read is NOT_FOUND as a
   * missing one, and its lineage shows only what the caller may read (docs/security.md).
   */
  async function describe(ref: CheckpointRef, field: string, scope: Scope | undefined): Promise<Checkpoint> {
    try {
      await assertCheckpointReadable(deps, scope, ref);
      const d = await describer.describe(ref);
      const readable = await Promise.all(d.lineage.map((r) => canReadCheckpoint(deps, scope, r)));
      return toProto({ ...d, lineage: d.lineage.filter((_, i) => readable[i]) });
    } catch (err) {
      throw toRpcError(err, { checkpointField: field });
    }
  }

  /** One damaged checkpoint must not hide every other from a list: left out and logged (Get answers DATA_LOSS). */
  function leftOut(ref: CheckpointRef, err: unknown): undefined {
    const damaged = err instanceof CheckpointIntegrityError || (err instanceof ConnectError && err.code === Code.DataLoss);
    if (!damaged) throw err;
    deps.logger.error({ checkpoint: ref.uri, err: (err as Error).message }, "damaged checkpoint left out of a list");
    return undefined;
  }

  /** The adapter's base: it must exist and be a model or an adapter; its root model's config is what the adapter must fit. */
  async function checkBase(metadata: CheckpointImportMetadata, scope: Scope | undefined) {
    const ref = checkpointRefOf(metadata.base);
    try {
      await assertCheckpointReadable(deps, scope, ref);
      const { kind } = await deps.store.readManifest(ref);
      if (!ADAPTER_PARENT_KINDS.includes(kind)) {
        throw rpcError(Code.FailedPrecondition, "CHECKPOINT_KIND_INVALID", `metadata.base is a ${kind} checkpoint; an adapter applies to a ${ADAPTER_PARENT_KINDS.join(" or ")}`, { field: "metadata.base" });
      }
      return { ref, model: await rootModelConfig(deps.store, ref) };
    } catch (err) {
      throw toRpcError(err, { checkpointField: "metadata.base" });
    }
  }

  return {
    desc: CheckpointService,
    register(router) {
      router.service(CheckpointService, {
        async importCheckpoint(requests, ctx) {
          const messages = untilAborted(requests, ctx.signal);
          const first = await messages.next();
          const metadata = checkMetadata(first.done ? undefined : first.value);
          const scope = scopeOf(principalOf(ctx));
          const parent = metadata.type === CheckpointType.ADAPTER ? await checkBase(metadata, scope) : undefined;
          const dir = await work.create("import");
          try {
            const admitted = await streamedBytesCheck(deps, scope?.tenant, "checkpoints");
            const { bytes: received, files } = await receiveFolder(messages, dir, deps.uploads, admitted).catch((err: unknown) => {
              if (err instanceof ConnectError) throw err;
              // A disk error's own message holds the server's paths.
              throw rpcError(Code.Internal, "IMPORT_WRITE_FAILED", `could not write the upload (${(err as NodeJS.ErrnoException).code ?? "error"})`);
            });
            const options = { kind: metadata.type === CheckpointType.ADAPTER ? KIND.adapter : KIND.model, parent, name: metadata.displayName };
            // The same folder again (a retried call): stored and checked already, and the
            // caller's, so nothing to store or charge, even at its quota.
            const again = importedRef(files, options);
            const stored = await deps.store.exists(again).catch((err: unknown) => {
              throw toRpcError(err);
            });
            if (stored && (!scope || (await owns(deps.store, scope.tenant, "checkpoints", checkpointHex(again))))) {
              return { checkpoint: await describe(again, "checkpoint", scope) };
            }
            // Over the tenant's byte quota: refused before anything reaches the store; held
            // until the claim charges the bytes (quotas.ts).
            const reservation = scope && (await reserveStoredBytes(deps, scope.tenant, received));
            try {
              // A client gone before the folder is stored leaves nothing behind.
              if (callCancelled(ctx)) throw callCancelledError();
              const ref = await importCheckpoint(deps.store, dir, options).catch((err: unknown) => {
                throw err instanceof CheckpointFormatError ? formatInvalid(err) : toRpcError(err);
              });
              if (scope) await claim(deps.store, scope.tenant, "checkpoints", checkpointHex(ref), { bytes: await checkpointBytes(deps.store, ref) });
              return { checkpoint: await describe(ref, "checkpoint", scope) };
            } finally {
              await reservation?.release();
            }
          } finally {
            await work.remove(dir);
          }
        },
        async getCheckpoint(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          v.check();
          return { checkpoint: await describe(checkpointRefOf(req.checkpoint), "checkpoint", scopeOf(principalOf(ctx))) };
        },
        async listCheckpoints(req, ctx) {
          const v = new RequestValidator();
          const after = checkPage(v, req.pageSize, req.pageToken, decodeToken);
          v.check();
          try {
            // Only what the caller may read, left out before paging so tokens stay exact.
            const scope = scopeOf(principalOf(ctx));
            const tenant = visibleTenant(scope);
            const owned = tenant === undefined ? undefined : await ownedBy(deps.store, tenant, "checkpoints");
            const entries: { key: string; item: CheckpointRef }[] = [];
            for (const ref of await deps.store.list()) {
              if (owned && !owned.has(checkpointHex(ref)) && !isBuiltin(deps.builtins, ref)) continue;
              const summary = await describer.summary(ref).catch((err: unknown) => leftOut(ref, err));
              if (!summary) continue;
              const { manifest, committedAt } = summary;
              const type = TYPE_OF_KIND[manifest.kind];
              if (type === undefined || (req.type !== CheckpointType.UNSPECIFIED && type !== req.type)) continue;
              // Newest first; the URI breaks ties, so a key places a page's end exactly.
              entries.push({ key: `${timeKey(committedAt.getTime())} ${ref.uri}`, item: ref });
            }
            const { page, nextKey } = pageByKey(entries, req.pageSize, after);
            const described = await Promise.all(page.map((ref) => describe(ref, "checkpoints", scope).catch((err: unknown) => leftOut(ref, err))));
            return {
              checkpoints: described.filter((c): c is Checkpoint => c !== undefined),
              nextPageToken: nextKey && keyToken(nextKey),
            };
          } catch (err) {
            throw toRpcError(err);
          }
        },
        async *exportCheckpoint(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          const format = FORMATS[req.format];
          if (!format) v.fail("format", "must be MERGED, PEFT_ADAPTER or AS_STORED");
          if (format === "stored" && req.dtype !== TensorDtype.UNSPECIFIED) v.fail("dtype", "must be unset for AS_STORED: the stored files are sent unchanged");
          if (!(req.dtype in DTYPES)) v.fail("dtype", "must be F32, F16 or BF16");
          v.check();
          const ref = checkpointRefOf(req.checkpoint);
          const dir = await work.create("export");
          // A client that goes away can leave this generator suspended at a yield, where its
          // finally never runs: the folder (a whole merged model) goes with the call instead.
          const onAbort = () => void work.remove(dir);
          ctx.signal.addEventListener("abort", onAbort, { once: true });
          try {
            let files: ExportedFile[];
            try {
              await assertCheckpointReadable(deps, scopeOf(principalOf(ctx)), ref);
              files = await exportCheckpoint(deps.store, ref, format!, dir, DTYPES[req.dtype]);
            } catch (err) {
              if (err instanceof ExportPreconditionError) throw rpcError(Code.FailedPrecondition, err.reason, err.message, { field: "checkpoint" });
              throw toRpcError(err, { checkpointField: "checkpoint" });
            }
            for (const file of files) yield* streamFile(file, ctx);
          } finally {
            ctx.signal.removeEventListener("abort", onAbort);
            await work.remove(dir);
          }
        },
        async deleteCheckpoint(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          v.check();
          const ref = checkpointRefOf(req.checkpoint);
          const scope = scopeOf(principalOf(ctx));
          try {
            await assertCheckpointReadable(deps, scope, ref);
            if (isBuiltin(deps.builtins, ref)) {
              throw rpcError(Code.FailedPrecondition, "CHECKPOINT_BUILTIN", `${ref.uri} is a shipped checkpoint: it stays`, { field: "checkpoint" });
            }
            const hex = checkpointHex(ref);
            await assertNoJobUses(deps, scope, "checkpoints", hex, ref.uri, "checkpoint");
            // Names the first of them, so a client knows what to delete first.
            const inUse = (children: CheckpointRef[]) =>
              rpcError(
                Code.FailedPrecondition,
                "CHECKPOINT_IN_USE",
                `${children.length} stored checkpoint(s) build on ${ref.uri} (adapters or training states over it), ${children[0].uri} first: delete those first`,
                { field: "checkpoint", children: String(children.length), child_uri: children[0].uri, child_digest: children[0].digest },
              );
            const tenant = visibleTenant(scope);
            if (tenant !== undefined) {
              // A tenant gives up its ownership once its own checkpoints over this one are gone.
              // What other tenants built on it is never counted to it, nor stops it (that would
              // tell it they exist): those keep the files, as the other owners do.
              const children = await childrenOf(deps.store, ref);
              const owned = await ownedBy(deps.store, tenant, "checkpoints");
              const own = children.filter((c) => owned.has(checkpointHex(c)));
              if (own.length > 0) throw inUse(own);
              const owners = await release(deps.store, tenant, "checkpoints", hex);
              if (owners.length > 0 || children.length > 0) return {};
            } else {
              // An admin, or a call without tenancy, removes the checkpoint for everybody.
              const children = await childrenOf(deps.store, ref);
              if (children.length > 0) throw inUse(children);
              await releaseAll(deps.store, "checkpoints", hex);
            }
            await deps.store.delete(ref);
            deps.checkpoints.forget(ref);
            return {};
          } catch (err) {
            throw toRpcError(err, { checkpointField: "checkpoint" });
          }
        },
      }, HANDLER_OPTIONS);
    },
  };
}

/** The first message: metadata with a known type, an adapter's base, a short display name. */
function checkMetadata(first: ImportCheckpointRequest | undefined): CheckpointImportMetadata {
  if (first?.content.case !== "metadata") {
    throw invalidArgument([{ field: "metadata", description: "must be the first message" }]);
  }
  const metadata = first.content.value;
  const v = new RequestValidator();
  if (metadata.type === CheckpointType.ADAPTER) checkCheckpointRef(v, "metadata.base", metadata.base);
  else if (metadata.type === CheckpointType.BASE_MODEL) {
    if (metadata.base) v.fail("metadata.base", "is only for adapters");
  } else v.fail("metadata.type", "must be CHECKPOINT_TYPE_BASE_MODEL or CHECKPOINT_TYPE_ADAPTER");
  if ([...metadata.displayName].length > MAX_DISPLAY_NAME) v.fail("metadata.display_name", `is longer than ${MAX_DISPLAY_NAME} characters`);
  if (/[\u0000-\u001f\u007f]/.test(metadata.displayName)) v.fail("metadata.display_name", "holds control characters");
  // A client that finds the shipped base model by its name must not find an import instead.
  if (metadata.displayName.startsWith("builtin/")) v.fail("metadata.display_name", 'begins "builtin/", which names the shipped checkpoints');
  v.check();
  return metadata;
}

/** A folder that is not a valid checkpoint: the file at fault (relative) and what is wrong. */
function formatInvalid(err: CheckpointFormatError) {
  const field = err.file ?? "chunk.path";
  return rpcError(Code.InvalidArgument, "CHECKPOINT_FORMAT_INVALID", err.message, err.file ? { file: err.file } : {}, [
    // The violation names the file as its field; its description is what is wrong with it.
    { desc: BadRequestSchema, value: { fieldViolations: [{ field, description: err.file && err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message }] } },
  ]);
}

function toProto(d: CheckpointDescription): Checkpoint {
  return create(CheckpointSchema, {
    ref: d.ref,
    type: TYPE_OF_KIND[d.kind] ?? CheckpointType.UNSPECIFIED,
    displayName: d.name,
    model: d.model && { ...d.model, parameterCount: BigInt(d.model.parameterCount) },
    adapter: d.adapter && { ...d.adapter, parameterCount: BigInt(d.adapter.parameterCount) },
    files: d.files.map((f) => ({ path: f.path, sizeBytes: BigInt(f.size), sha256: f.sha256 })),
    sizeBytes: BigInt(d.sizeBytes),
    lineage: d.lineage,
    jobId: d.jobId,
    createTime: timestampFromDate(d.committedAt),
  });
}

/** One file as chunks in order, its sha256 on the last one (an empty file is one empty chunk). */
async function* streamFile(file: ExportedFile, ctx: HandlerContext): AsyncGenerator<ExportCheckpointResponse> {
  const hash = createHash("sha256");
  const size = BigInt(file.size);
  let offset = 0n;
  let pending: Buffer | undefined;
  const message = (data: Buffer, sha256 = "") => create(ExportCheckpointResponseSchema, { path: file.path, offset, data, fileSizeBytes: size, sha256 });
  for await (const chunk of createReadStream(file.source, { highWaterMark: EXPORT_CHUNK_BYTES, signal: ctx.signal })) {
    if (pending) {
      yield message(pending);
      offset += BigInt(pending.byteLength);
    }
    hash.update(chunk as Buffer);
    pending = chunk as Buffer;
  }
  yield message(pending ?? Buffer.alloc(0), hash.digest("hex"));
}

/** Page tokens: the (commit time, uri) of a page's last checkpoint, base64url. */
/** A page token's key: the commit time and uri of the last checkpoint shown. */
const decodeToken = (token: string) => tokenKey(token, /^\d{15} store:\/\/checkpoints\/[0-9a-f]{64}$/);
