/**
 * Time bounds on calls. A default deadline for unary calls that arrive without one, so a
 * stuck call or an abandoned client does not hold the server forever: the handler's signal
 * aborts at the deadline (cooperative work stops), and the call ends with DEADLINE_EXCEEDED
 * even if the handler ignores it. Streams are exempt: watching a job for hours is their
 * purpose; but an upload waits for each next message only so long. And a client's own
 * deadline is kept within what a timer can hold.
 */
import { Code, type Interceptor } from "@connectrpc/connect";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
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

/**
 * Ends a client stream (an upload, an import) whose next message does not come within `ms`:
 * a client that stalls mid-upload would otherwise hold its temp file and call open for as long
 * as its connection lives. The handler sees the error from its message stream and cleans up
 * as for any broken upload.
 */
export function streamIdleTimeout(ms: number): Interceptor {
  // Bidirectional streams (reflection) are conversations, where the client may well pause.
  return (next) => async (req) => (ms > 0 && req.stream && req.method.methodKind === "client_streaming" ? next({ ...req, message: idleBounded(req.message, ms) }) : next(req));
}

async function* idleBounded<T>(messages: AsyncIterable<T>, ms: number): AsyncIterable<T> {
  const it = messages[Symbol.asyncIterator]();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(rpcError(Code.DeadlineExceeded, "STREAM_IDLE", `no message of the request stream came within ${ms} ms of the last; the call is ended (send the next message sooner)`, { idle_ms: String(ms) })),
        ms,
      );
    });
    let r: IteratorResult<T>;
    try {
      r = await Promise.race([it.next(), idle]);
    } finally {
      // Only the wait for the client counts, not the handler's work on a message.
      clearTimeout(timer);
    }
    if (r.done) return;
    yield r.value;
  }
}

/** setTimeout's longest delay; Node runs a timer set for longer after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
const GRPC_TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/**
 * connect-es arms one timer for a client's deadline, so a deadline past setTimeout's range
 * (24.8 days: a long Watch given 30 days, say) would end the call within a millisecond.
 * Such a deadline is cut to that range before connect-es reads it.
 */
export function withDeadlineInRange(handler: UniversalHandler): UniversalHandler {
  const wrapped = (req: Parameters<UniversalHandler>[0]) => {
    const grpc = req.header.get("grpc-timeout")?.match(/^(\d{1,8})([HMSmun])$/);
    if (grpc && Number(grpc[1]) * GRPC_TIMEOUT_UNIT_MS[grpc[2]] > MAX_TIMER_MS) req.header.set("grpc-timeout", `${Math.floor(MAX_TIMER_MS / 1000)}S`);
    const connect = req.header.get("connect-timeout-ms");
    if (connect && /^\d{1,10}$/.test(connect) && Number(connect) > MAX_TIMER_MS) req.header.set("connect-timeout-ms", String(MAX_TIMER_MS));
    return handler(req);
  };
  return Object.assign(wrapped, handler);
}
