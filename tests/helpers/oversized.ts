// Oversized requests as a hostile client sends them, streamed so the test itself never holds
// them: a gRPC message whose length prefix claims `claimed` bytes, followed by as many bytes
// as the server will take (HTTP/2 flow control decides), and a Connect unary POST with a
// huge Content-Length. Each reports what the server answered and how much it had read.
import http2 from "node:http2";
import net from "node:net";

export interface Refusal {
  /** grpc-status, or the HTTP status for Connect. */
  status: number;
  message: string;
  /** Body bytes the server had accepted when it answered. */
  sent: number;
}

/**
 * A gRPC call on `path` whose one message is `claimed` bytes: string field `field` of
 * `claimed` - 6 bytes of "x" (a well-formed message); stops sending once the server answers.
 */
export async function oversizedGrpc(baseUrl: string, path: string, claimed: number, field = 2, headers: Record<string, string> = {}): Promise<Refusal> {
  const session = http2.connect(baseUrl);
  session.on("error", () => {});
  try {
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let answered = false;
    let sent = 0;
    const result = new Promise<Refusal>((resolve, reject) => {
      let status: number | undefined;
      let message = "";
      const take = (h: http2.IncomingHttpHeaders) => {
        if (h["grpc-status"] !== undefined) {
          status = Number(h["grpc-status"]);
          message = decodeURIComponent(String(h["grpc-message"] ?? ""));
          // The server stopped reading; like gRPC clients, end the call rather than wait on flow control.
          req.close(http2.constants.NGHTTP2_CANCEL);
        }
      };
      req.on("response", (h) => {
        answered = true;
        take(h);
      });
      req.on("trailers", take);
      req.on("data", () => {});
      req.on("close", () => (status === undefined ? reject(new Error(`no grpc-status (rst ${req.rstCode})`)) : resolve({ status, message, sent })));
      req.on("error", () => {});
    });
    const answer = new Promise((r) => {
      req.once("response", r);
      req.once("close", r);
    });
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(claimed >>> 0, 1);
    req.write(prefix);
    // The string's length is what is left after its tag and the length's own varint.
    let length = claimed - 2;
    while (1 + varint(length).length + length > claimed) length--;
    const head = Buffer.from([(field << 3) | 2, ...varint(length)]);
    req.write(head);
    sent = head.length;
    const chunk = Buffer.alloc(1 << 20, 0x78);
    while (!answered && sent < claimed && !req.destroyed) {
      const n = Math.min(chunk.length, claimed - sent);
      if (!req.write(chunk.subarray(0, n))) {
        await Promise.race([new Promise((r) => req.once("drain", r)), answer]);
      }
      sent += n;
    }
    if (!req.destroyed) req.end();
    return await result;
  } finally {
    session.destroy();
  }
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** A Connect unary POST announcing `contentLength` bytes, of which only a few are sent. */
export function oversizedConnect(port: number, path: string, contentLength: number): Promise<Refusal> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nContent-Length: ${contentLength}\r\n\r\n{"texts":["`,
      );
    });
    let response = "";
    socket.on("data", (d) => {
      response += d.toString("latin1");
      const end = response.indexOf("\r\n\r\n");
      const body = end >= 0 ? response.slice(end + 4) : "";
      if (end >= 0 && body.includes("}")) {
        socket.destroy();
        const json = JSON.parse(body.slice(body.indexOf("{"), body.lastIndexOf("}") + 1)) as { code: string; message: string };
        resolve({ status: Number(response.split(" ")[1]), message: `${json.code}: ${json.message}`, sent: 11 });
      }
    });
    socket.on("error", reject);
  });
}
