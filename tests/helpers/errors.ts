import { ConnectError } from "@connectrpc/connect";
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
