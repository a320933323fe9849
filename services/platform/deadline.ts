/**
 * A default deadline for unary calls that arrive without one, so a stuck call or an
 * abandoned client does not hold the server forever. The handler's signal aborts at the
 * deadline (cooperative work stops), and the call ends with DEADLINE_EXCEEDED even if the
 * handler ignores it. Streams are exempt: watching a job for hours is their purpose.
 */
import { Code, type Interceptor } from "@connectrpc/connect";
import { rpcError } from "./errors.ts";

/** Headers in which gRPC, gRPC-Web and Connect clients send their deadline. */
const TIMEOUT_HEADERS = ["grpc-timeout", "connect-timeout-ms"];

export function unaryDeadline(ms: number): Interceptor {
  return (next) => async (req) => {
    if (ms <= 0 || req.stream || TIMEOUT_HEADERS.some((h) => req.header.has(h))) return next(req);
    const deadline = new AbortController();
    const reason = rpcError(
      Code.DeadlineExceeded,
      "DEFAULT_DEADLINE_EXCEEDED",
      `the call took longer than the server's default deadline of ${ms} ms for unary calls (send a deadline to choose another)`,
      { deadline_ms: String(ms) },
    );
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        deadline.abort(reason);
        reject(reason);
      }, ms);
    });
    try {
      return await Promise.race([next({ ...req, signal: AbortSignal.any([req.signal, deadline.signal]) }), expired]);
    } finally {
      clearTimeout(timer);
    }
  };
}
