/**
 * Per-tenant quotas (docs/security.md, "Quotas"): jobs not yet final, and bytes stored
 * (datasets and checkpoints the tenant owns, ownership.ts). Only with tenancy on. Over a
 * quota: RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming the tenant, the limit and
 * its value, and ErrorInfo QUOTA_EXCEEDED with the same in its metadata.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { rpcError } from "../platform/errors.ts";
import { toRpcError } from "./runtime-errors.ts";
import type { SuiteDeps } from "./deps.ts";
import { reserveAndRead, usageAndLargest, usageOf, type OwnedKind } from "./ownership.ts";

export interface Quotas {
  /** Jobs of one tenant queued, running or cancelling at once (VACCINE_QUOTA_JOBS; 0: no limit). */
  jobs: number;
  /** Bytes of datasets and checkpoints one tenant owns (VACCINE_QUOTA_STORED_BYTES; 0: no limit). */
  storedBytes: number;
}

export const QUOTA_EXCEEDED = "QUOTA_EXCEEDED";

/** The configuration variable that sets each quota: refusals name it. */
const QUOTA_VARIABLES = { jobs: "VACCINE_QUOTA_JOBS", storedBytes: "VACCINE_QUOTA_STORED_BYTES" } as const;

/** The error of a refused call over the quota `limit` of value `value`. */
export function quotaExceeded(tenant: string, limit: keyof Quotas, value: number, message: string): ConnectError {
  const variable = QUOTA_VARIABLES[limit];
  return rpcError(Code.ResourceExhausted, QUOTA_EXCEEDED, message, { tenant, limit: variable, value: String(value) }, [
    {
      desc: QuotaFailureSchema,
      value: { violations: [{ subject: `tenant:${tenant}`, description: `${variable} is ${value}: ${message}`, quotaMetric: limit, quotaValue: BigInt(value) }] },
    },
  ]);
}

/** The refusal of a new job when the tenant already has `active` jobs not final, at its quota `limit`. */
export function jobQuotaExceeded(tenant: string, limit: number, active: number): ConnectError {
  return quotaExceeded(tenant, "jobs", limit, `tenant ${tenant} has ${active} jobs queued or running, its quota is ${limit}; wait for one to end or cancel one`);
}

/** Refuses a new job when the tenant is at or over its byte quota already (a job's outputs are charged as they are written). */
export async function checkStoredBytesQuota(deps: Pick<SuiteDeps, "quotas" | "store">, tenant: string): Promise<void> {
  const limit = deps.quotas?.storedBytes ?? 0;
  if (limit <= 0) return;
  const used = await usageOf(deps.store, tenant);
  if (used >= limit) throw storedBytesExceeded(tenant, limit, used, 0);
}

/**
 * How long a reservation counts when its process died before releasing it. It is written once
 * the upload is received, so it covers only the copy into the store; a copy slower than this
 * stops being counted for concurrent admissions (docs/security.md, "Quotas").
 */
export const RESERVATION_TTL_MS = 60 * 60 * 1000;

/**
 * Admits storing `adding` more bytes for the tenant, or refuses when they would take it over
 * its byte quota. The bytes are reserved in the store before the tenant's usage is read, and
 * stay reserved until `release` (call it after the write and its claim, in a finally): of two
 * admissions racing on any replicas, at least one sees the other's reservation, so together
 * they never go over the quota (at worst both are refused). Without a byte quota nothing is
 * reserved.
 */
export async function reserveStoredBytes(deps: Pick<SuiteDeps, "quotas" | "store">, tenant: string, adding: number): Promise<{ release(): Promise<void> }> {
  const limit = deps.quotas?.storedBytes ?? 0;
  if (limit <= 0) return { release: async () => {} };
  const { usage, release } = await reserveAndRead(deps.store, tenant, adding, RESERVATION_TTL_MS);
  if (usage > limit) {
    await release();
    throw storedBytesExceeded(tenant, limit, usage - adding, adding);
  }
  return { release };
}

/**
 * Checks the bytes an upload or import of `tenant` has streamed so far against its byte quota,
 * so one that cannot be stored is cut short rather than received whole: it can end stored only
 * if it fits the room left under the quota, or is what the tenant owns already (a retried call,
 * accepted at the quota too), so no larger than its largest owned resource of `kind`. The usage
 * is read again once before refusing, so a delete made meanwhile counts. reserveStoredBytes
 * still decides at the end; this only stops early what it would refuse. Without tenancy or a
 * byte quota it checks nothing.
 */
export async function streamedBytesCheck(deps: Pick<SuiteDeps, "quotas" | "store">, tenant: string | undefined, kind: OwnedKind): Promise<(bytes: number) => Promise<void>> {
  const limit = deps.quotas?.storedBytes ?? 0;
  if (tenant === undefined || limit <= 0) return async () => {};
  const read = async () => {
    // As RPC errors: the caller may be reading a stream whose own failures it maps otherwise.
    const { used, largest } = await usageAndLargest(deps.store, tenant, kind).catch((err: unknown) => {
      throw toRpcError(err);
    });
    return { used, largest, bound: Math.max(limit - used, largest) };
  };
  let now = await read();
  let reread = false;
  return async (bytes) => {
    if (bytes <= now.bound) return;
    if (!reread) {
      reread = true;
      now = await read();
      if (bytes <= now.bound) return;
    }
    throw quotaExceeded(
      tenant,
      "storedBytes",
      limit,
      `tenant ${tenant} stores ${now.used} bytes; its quota is ${limit} bytes. This upload has sent ${bytes}, more than the ${Math.max(0, limit - now.used)} left and than anything of its kind the tenant stores already (${now.largest}, a retried upload's most): it was stopped there. Delete datasets or checkpoints (training states first) it no longer needs`,
    );
  };
}

function storedBytesExceeded(tenant: string, limit: number, used: number, adding: number): ConnectError {
  return quotaExceeded(
    tenant,
    "storedBytes",
    limit,
    `tenant ${tenant} stores ${used} bytes${adding > 0 ? ` and this adds ${adding}` : ""}; its quota is ${limit} bytes. Delete datasets or checkpoints (training states first) it no longer needs`,
  );
}
