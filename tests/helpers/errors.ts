import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";

/** The ErrorInfo and BadRequest details of an RPC error, decoded. */
export function errorDetails(err: unknown) {
  const ce = ConnectError.from(err);
  return {
    code: ce.code,
    message: ce.rawMessage,
    info: ce.findDetails(ErrorInfoSchema)[0],
    badRequest: ce.findDetails(BadRequestSchema)[0],
  };
}

/** Runs a call that must fail and returns its decoded error. */
export async function rpcFailure(call: () => Promise<unknown>) {
  try {
    await call();
  } catch (err) {
    return errorDetails(err);
  }
  throw new Error("expected the call to fail");
}

/**
 * The jobs created by concurrent creates of one tenant against its job quota `limit`; every
 * other attempt must have been refused as over that quota.
 */
export function createdWithinJobQuota<T>(tries: PromiseSettledResult<T>[], tenant: string, limit: number): T[] {
  for (const t of tries) {
    if (t.status === "fulfilled") continue;
    const { code, info, message } = errorDetails(t.reason);
    if (code !== Code.ResourceExhausted || info?.reason !== "QUOTA_EXCEEDED" || info.metadata.limit !== "VACCINE_QUOTA_JOBS" || info.metadata.value !== String(limit) || info.metadata.tenant !== tenant) {
      throw new Error(`not a job-quota refusal: ${Code[code]} ${message}`);
    }
  }
  return tries.flatMap((t) => (t.status === "fulfilled" ? [t.value] : []));
}
