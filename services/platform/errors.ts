import { create, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { AnySchema, anyPack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  type BadRequest_FieldViolation,
} from "../../gen/google/rpc/error_details_pb.ts";
import { StatusSchema, type Status } from "../../gen/google/rpc/status_pb.ts";

/** The google.rpc.ErrorInfo domain of every error this suite raises. */
export const ERROR_DOMAIN = "vaccine.v1";

/** ErrorInfo reasons of request validation; other reasons live with the code that raises them. */
export const Reason = {
  FIELD_INVALID: "FIELD_INVALID",
} as const;

type Detail = { desc: DescMessage; value: MessageInitShape<DescMessage> };

/** A call this process will not finish: it is stopping (the client retries elsewhere). */
export function shuttingDown(): ConnectError {
  return rpcError(Code.Unavailable, "SERVER_SHUTTING_DOWN", "the server is shutting down; retry on another replica");
}

/**
 * The one way to build an RPC error: a ConnectError carrying a google.rpc.ErrorInfo
 * (reason, domain, metadata) and any further details.
 */
export function rpcError(
  code: Code,
  reason: string,
  message: string,
  metadata: Record<string, string> = {},
  extra: Detail[] = [],
): ConnectError {
  const info: Detail = { desc: ErrorInfoSchema, value: { reason, domain: ERROR_DOMAIN, metadata } };
  return new ConnectError(message, code, undefined, [info, ...extra]);
}

/**
 * INVALID_ARGUMENT naming every bad field, with a google.rpc.BadRequest detail: every
 * INVALID_ARGUMENT of the suite has one, so a client finds the field the same way for all.
 */
export function invalidArgument(
  violations: Pick<BadRequest_FieldViolation, "field" | "description">[],
  reason: string = Reason.FIELD_INVALID,
  metadata: Record<string, string> = {},
): ConnectError {
  // A violation of the whole message (one that does not decode) names no field.
  const message = violations.map((v) => (v.field ? `${v.field}: ${v.description}` : v.description)).join("; ");
  const named = violations.flatMap((v) => (v.field ? [v.field] : [])).join(",");
  return rpcError(
    Code.InvalidArgument,
    reason,
    message,
    { ...(named ? { fields: named } : {}), ...metadata },
    [{ desc: BadRequestSchema, value: { fieldViolations: violations } }],
  );
}

/** A google.rpc.Status (for a long-running operation's recorded error) with the same ErrorInfo the RPC error would carry. */
export function toStatus(err: ConnectError): Status {
  const details = err.details.map((d) =>
    "desc" in d
      ? anyPack(d.desc, create(d.desc, d.value))
      : create(AnySchema, { typeUrl: `type.googleapis.com/${d.type}`, value: d.value }),
  );
  return create(StatusSchema, { code: err.code, message: err.rawMessage, details });
}

/** The inverse of toStatus: an error recorded or sent as a google.rpc.Status, as an RPC error again with the same details. */
export function fromStatus(status: Status): ConnectError {
  const err = new ConnectError(status.message, status.code as Code);
  // Already-encoded details, as a client receives them.
  for (const a of status.details) err.details.push({ type: a.typeUrl.slice(a.typeUrl.lastIndexOf("/") + 1), value: a.value });
  return err;
}
