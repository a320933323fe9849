/**
 * One gRPC call over a bare HTTP/2 stream, for what a generated client would not send or would
 * not show: a message that does not decode, a deadline the server must enforce (a client stops
 * waiting at its own), the server's trailers as they are.
 */
import http2 from "node:http2";
import type { ConnectError } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";

export interface RawCall {
  /** The status the trailers carry; undefined for OK. */
  error: ConnectError | undefined;
  /** Bytes of the response body (its message envelopes). */
  bodyBytes: number;
  ms: number;
}

/** POSTs `message` (a serialized request, enveloped here) to `/<service>/<method>`. */
export async function rawGrpc(url: string, path: string, message: Uint8Array, headers: Record<string, string> = {}, session: http2.SecureClientSessionOptions = {}): Promise<RawCall> {
  const client = http2.connect(url, session);
  try {
    const envelope = Buffer.alloc(5 + message.length);
    envelope.writeUInt32BE(message.length, 1);
    envelope.set(message, 5);
    const t0 = Date.now();
    const req = client.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    req.end(envelope);
    let bodyBytes = 0;
    const all = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
      let all: http2.IncomingHttpHeaders = {};
      req.on("response", (h) => (all = { ...all, ...h }));
      req.on("trailers", (t) => (all = { ...all, ...t }));
      req.on("data", (c: Buffer) => (bodyBytes += c.length));
      req.on("end", () => resolve(all));
      req.on("error", reject);
    });
    const trailers = new Headers(Object.entries(all).filter(([k]) => !k.startsWith(":")) as [string, string][]);
    return { error: findTrailerError(trailers), bodyBytes, ms: Date.now() - t0 };
  } finally {
    client.close();
  }
}
