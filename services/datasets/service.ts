import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Dataset, DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { ownedBy, ownershipOf, release, releaseAll, scopeOf, visibleTenant, type Scope } from "../common/ownership.ts";
import { dataUri, DatasetCorruptError, datasetHex } from "../runtime/pipeline/datasets.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { assertNoJobUses } from "../common/jobs-using.ts";
import { principalOf } from "../platform/principal.ts";
import { callCancelled, untilAborted } from "../platform/aborted-calls.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator, checkPage, keyToken, pageByKey, timeKey, tokenKey } from "../platform/validate.ts";
import { StoreObjectNotFoundError } from "../runtime/store/store.ts";
import { deleteDataset, listRecords, ownView, readRecord } from "./records.ts";
import { sweepSpools } from "./spool.ts";
import { uploadDataset } from "./upload.ts";

/** Download chunks stay well under the 4 MiB message bound clients assume. */
const DOWNLOAD_CHUNK_BYTES = 1024 * 1024;

export interface DatasetServiceOptions {
  /** Where uploads in progress are spooled (default: <os tmpdir>/vaccine-uploads). */
  spoolDir?: string;
}

/** DatasetService: streamed, validated uploads stored by content; get, list, download, delete. */
export function datasetService(deps: SuiteDeps, options: DatasetServiceOptions = {}): ServiceModule {
  const spoolDir = options.spoolDir ?? join(tmpdir(), "vaccine-uploads");
  // Temp files of a process that crashed mid-upload.
  void sweepSpools(spoolDir).catch((err: unknown) => deps.logger.warn({ err, spoolDir }, "could not sweep upload temp files"));

  /**
   * The dataset a request's uri names, or INVALID_ARGUMENT / NOT_FOUND. With tenancy, one
   * the caller's tenant does not own is NOT_FOUND exactly as a missing one.
   */
  async function existing(uri: string, scope: Scope | undefined): Promise<{ hex: string; dataset: Dataset }> {
    const hex = datasetHex(uri);
    if (hex === undefined) throw invalidArgument([{ field: "uri", description: 'must be "store://datasets/<64 lowercase hex digits>"' }]);
    const tenant = visibleTenant(scope);
    const ownership = tenant === undefined ? undefined : await ownershipOf(deps.store, tenant, "datasets", hex);
    const dataset = tenant === undefined || ownership ? await readRecord(deps.store, hex) : undefined;
    if (!dataset) throw rpcError(Code.NotFound, "DATASET_NOT_FOUND", `dataset ${uri} does not exist`, { field: "uri", uri });
    return { hex, dataset: ownView(dataset, ownership) };
  }

  return {
    desc: DatasetService,
    register(router) {
      router.service(DatasetService, {
        async uploadDataset(requests, ctx) {
          try {
            return { dataset: await uploadDataset(deps, spoolDir, untilAborted(requests, ctx.signal), scopeOf(principalOf(ctx)), () => callCancelled(ctx)) };
          } catch (err) {
            throw toRpcError(err);
          }
        },
        async getDataset(req, ctx) {
          try {
            return { dataset: (await existing(req.uri, scopeOf(principalOf(ctx)))).dataset };
          } catch (err) {
            throw toRpcError(err);
          }
        },
        async listDatasets(req, ctx) {
          const v = new RequestValidator();
          const cursor = checkPage(v, req.pageSize, req.pageToken, decodeToken);
          v.check();
          try {
            // Another tenant's datasets are left out before paging, so tokens stay exact.
            const tenant = visibleTenant(scopeOf(principalOf(ctx)));
            const owned = tenant === undefined ? undefined : await ownedBy(deps.store, tenant, "datasets");
            const entries = (await listRecords(deps.store)).filter((e) => !owned || owned.has(e.hex));
            // Newest first; the digest breaks ties, so a key places a page's end exactly.
            const { page, nextKey } = pageByKey(entries.map((e) => ({ key: `${timeKey(e.time)} ${e.hex}`, item: e })), req.pageSize, cursor);
            const records = await Promise.all(
              page.map(async (e) => {
                const record = await readRecord(deps.store, e.hex).catch((err: unknown) => {
                  // One damaged record must not hide every dataset: left out here, DATA_LOSS on Get.
                  if (!(err instanceof ConnectError && err.code === Code.DataLoss)) throw err;
                  deps.logger.error({ uri: dataUri(e.hex), err: err.rawMessage }, "damaged dataset record left out of a list");
                  return undefined;
                });
                return record && tenant !== undefined ? ownView(record, await ownershipOf(deps.store, tenant, "datasets", e.hex)) : record;
              }),
            );
            return {
              // A dataset deleted between the listing and the read, or damaged, is left out.
              datasets: records.filter((d): d is Dataset => d !== undefined),
              nextPageToken: nextKey && keyToken(nextKey),
            };
          } catch (err) {
            throw toRpcError(err);
          }
        },
        async *downloadDataset(req, ctx) {
          let stream: Readable;
          let dataset: Dataset;
          try {
            const found = await existing(req.uri, scopeOf(principalOf(ctx)));
            dataset = found.dataset;
            stream = await deps.store.readObjectStream(dataUri(found.hex));
          } catch (err) {
            if (err instanceof StoreObjectNotFoundError) {
              throw rpcError(Code.DataLoss, "DATASET_BYTES_MISSING", `the bytes of ${req.uri} are missing from the store`, { uri: req.uri });
            }
            throw toRpcError(err);
          }
          // Verified while sent: a client that gets no error at the end has the uploaded bytes.
          const hash = createHash("sha256");
          let size = 0;
          for await (const piece of stream as AsyncIterable<Buffer>) {
            hash.update(piece);
            size += piece.byteLength;
            for (let at = 0; at < piece.byteLength; at += DOWNLOAD_CHUNK_BYTES) {
              yield { chunk: piece.subarray(at, at + DOWNLOAD_CHUNK_BYTES) };
            }
          }
          if (`sha256:${hash.digest("hex")}` !== dataset.digest || BigInt(size) !== dataset.sizeBytes) {
            throw toRpcError(new DatasetCorruptError(req.uri));
          }
        },
        async deleteDataset(req, ctx) {
          try {
            const scope = scopeOf(principalOf(ctx));
            const { hex } = await existing(req.uri, scope);
            await assertNoJobUses(deps, scope, "datasets", hex, req.uri, "uri");
            // A tenant gives up its ownership; the bytes go with the last owner. An admin, or
            // a call without tenancy, removes the dataset for everybody.
            if (visibleTenant(scope) !== undefined && (await release(deps.store, scope!.tenant, "datasets", hex)).length > 0) return {};
            await releaseAll(deps.store, "datasets", hex);
            await deleteDataset(deps.store, hex);
            return {};
          } catch (err) {
            throw toRpcError(err);
          }
        },
      });
    },
  };
}

/** A page token: the (time, digest) of the last dataset of the previous page. */
/** A page token's key: the record time and digest of the last dataset shown. */
const decodeToken = (token: string) => tokenKey(token, /^\d{15} [0-9a-f]{64}$/);
