/**
 * Calls ended by an abort (the client's deadline, the server's shutdown, the client's cancel)
 * end with the abort's error, with an ErrorInfo. connect-es ends such a call with an error
 * only when its handler throws, and then without one; a server stream whose handler returns
 * quietly after the abort (a Watch does) it ends with OK, which a client takes for the whole
 * stream: a Watch ends when its job does.
 */
import { Code, ConnectError, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { rpcError } from "./errors.ts";
import { REQUEST_RESET } from "./peer.ts";

export function abortedCalls(): Interceptor {
  return (next) => async (req) => {
    try {
      const res = await next(req);
      return res.stream ? { ...res, message: endOrCut(res.message, req.signal) } : res;
    } catch (err) {
      throw req.signal.aborted ? cutBy(req.signal.reason, err) : err;
    }
  };
}

async function* endOrCut<T>(messages: AsyncIterable<T>, signal: AbortSignal): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw signal.aborted ? cutBy(signal.reason, err) : err;
  }
  if (signal.aborted) throw cutBy(signal.reason, undefined);
}

/**
 * The error of a call aborted for `reason`: the server's own (shutdown: UNAVAILABLE), the
 * client's deadline, or its cancel. A request stream that fails (a message over the size
 * limit) aborts its call with no reason: then the error `thrown` is the call's own, kept.
 * Any other reason is the client's reset of the stream, CANCELLED whatever its HTTP/2 code
 * (connect names INTERNAL_ERROR, a Node client's reset at its deadline, INTERNAL): the
 * server did not fail, and its error counts must not say so.
 */
export function cutBy(reason: unknown, thrown: unknown): ConnectError {
  const own = thrown instanceof ConnectError && ![Code.Canceled, Code.Aborted, Code.Unknown].includes(thrown.code);
  const err = !(reason instanceof ConnectError) && own ? thrown : ConnectError.from(reason);
  if (err.findDetails(ErrorInfoSchema).length > 0) return err;
  if (err.code === Code.DeadlineExceeded) {
    return rpcError(Code.DeadlineExceeded, "DEADLINE_EXCEEDED", "the call's deadline passed before it ended (send a later one; a Watch resumes with after_sequence)");
  }
  if (err === thrown) return err;
  if (err.code === Code.Canceled || err.code === Code.Aborted) return callCancelledError();
  return rpcError(Code.Canceled, "CANCELLED", `the client reset the call before it ended (${err.rawMessage})`);
}

/**
 * Whether the client has cancelled the call: its signal, or a reset of its stream that the
 * signal does not show yet (connect aborts it only once the stream closes).
 */
export function callCancelled(ctx: HandlerContext): boolean {
  return ctx.signal.aborted || ctx.values.get(REQUEST_RESET)();
}

export function callCancelledError(): ConnectError {
  return rpcError(Code.Canceled, "CANCELLED", "the client cancelled the call before it ended");
}

/**
 * A request stream that ends, with the abort's reason, when the call is aborted while the
 * handler waits for its next message: connect's request stream does not, so an upload whose
 * client paused held a shutdown to its timeout and then ended CANCELLED, not UNAVAILABLE.
 */
export async function* untilAborted<T>(messages: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = messages[Symbol.asyncIterator]();
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => (onAbort = () => reject(signal.reason)));
  aborted.catch(() => {});
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      signal.throwIfAborted();
      const next = await Promise.race([it.next(), aborted]);
      if (next.done) return;
      yield next.value;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
