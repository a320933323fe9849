/**
 * Per-tenant quotas (docs/security.md, "Quotas"): jobs not yet final, and bytes stored
 * (datasets and checkpoints the tenant owns, ownership.ts). Only with tenancy on. Over a
 * quota: RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming the tenant, the limit and
 * its value, and ErrorInfo QUOTA_EXCEEDED with the same in its metadata.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { rpcError } from "../platform/errors.ts";
import type { SuiteDeps } from "./deps.ts";
import { usageOf } from "./ownership.ts";

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

/** Refuses a new job when the tenant already has `active` jobs at its quota. */
export function checkJobQuota(deps: Pick<SuiteDeps, "quotas">, tenant: string, active: number): void {
  const limit = deps.quotas?.jobs ?? 0;
  if (limit > 0 && active >= limit) {
    throw quotaExceeded(tenant, "jobs", limit, `tenant ${tenant} has ${active} jobs queued or running, its quota is ${limit}; wait for one to end or cancel one`);
  }
}

/**
 * Refuses storing `adding` more bytes when the tenant would go over its byte quota; with 0,
 * refuses when it is already at or over it (a job's outputs are charged as they are written).
 */
export async function checkStoredBytesQuota(deps: Pick<SuiteDeps, "quotas" | "store">, tenant: string, adding: number): Promise<void> {
  const limit = deps.quotas?.storedBytes ?? 0;
  if (limit <= 0) return;
  const used = await usageOf(deps.store, tenant);
  if (adding > 0 ? used + adding > limit : used >= limit) {
    throw quotaExceeded(
      tenant,
      "storedBytes",
      limit,
      `tenant ${tenant} stores ${used} bytes${adding > 0 ? ` and this adds ${adding}` : ""}; its quota is ${limit} bytes. Delete datasets it no longer needs`,
    );
  }
}
