/**
 * The CLI's two kinds of failure: a mistake in the command line (UsageError, exit 2), and a
 * failed call, which reads on stderr as status code, message, ErrorInfo and BadRequest details.
 */
import { ConnectError } from "@connectrpc/connect";
import { Code as RpcCode } from "../../gen/google/rpc/code_pb.ts";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";

/** A mistake in the command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The status code's canonical gRPC name (INVALID_ARGUMENT), as the API docs spell it. */
export function codeName(code: number): string {
  return RpcCode[code] ?? `CODE_${code}`;
}

/** The error's lines, the first one starting with `error:`. */
export function describeError(err: ConnectError): string {
  const lines = [`error: ${codeName(err.code)}: ${err.rawMessage}`];
  const info = err.findDetails(ErrorInfoSchema)[0];
  if (info) {
    lines.push(`  reason: ${info.reason}${info.domain ? ` (${info.domain})` : ""}`);
    for (const key of Object.keys(info.metadata).sort()) lines.push(`  ${key}: ${info.metadata[key]}`);
  }
  const violations = err.findDetails(BadRequestSchema)[0]?.fieldViolations ?? [];
  if (violations.length > 0) {
    lines.push("  field violations:");
    for (const v of violations) lines.push(`    ${v.field}: ${v.description}`);
  }
  return lines.join("\n") + "\n";
}

/** The error in one line, for a field of a job summary. */
export function oneLineError(err: ConnectError): string {
  const reason = err.findDetails(ErrorInfoSchema)[0]?.reason;
  return `${codeName(err.code)}: ${err.rawMessage}${reason ? ` [${reason}]` : ""}`;
}
