/**
 * The client certificate of a call's connection, as identities an mTLS mapping can name:
 * "CN=<common name>" and the subject alternative names as Node prints them ("DNS:...",
 * "URI:...", "email:...", "IP Address:..."). Read once per connection.
 */
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { TLSSocket } from "node:tls";
import { createContextKey } from "@connectrpc/connect";

export interface PeerIdentity {
  /** The chain was verified against the configured client CA. */
  verified: boolean;
  /** Alternative names first, then the subject CN: the order a mapping is searched in. */
  identities: string[];
}

export const PEER = createContextKey<PeerIdentity | undefined>(undefined, { description: "TLS client certificate" });

/** The address a call came from, as its connection's socket has it: for the audit log. */
export const REMOTE_ADDRESS = createContextKey<string | undefined>(undefined, { description: "remote address" });

/**
 * Whether the client reset the request (HTTP/2 RST_STREAM, or an HTTP/1.1 connection closed)
 * before the response: a check of the request's state now, for the request-stream handlers.
 */
export const REQUEST_RESET = createContextKey<() => boolean>(() => false, { description: "request reset by the client" });

export function requestReset(req: IncomingMessage | Http2ServerRequest): () => boolean {
  return "stream" in req ? () => req.stream.aborted : () => req.destroyed && !req.complete;
}

/**
 * How many Authorization fields the request carried: Node keeps the first and drops the others
 * (HTTP/1.1 and HTTP/2 alike), so two credentials would be taken as the first, unseen.
 */
export const AUTHORIZATION_FIELDS = createContextKey<number>(0, { description: "authorization header fields" });

export function authorizationFields(req: IncomingMessage | Http2ServerRequest): number {
  let n = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i].toLowerCase() === "authorization") n++;
  return n;
}

/** The remote address of a request's connection (HTTP/1.1 or HTTP/2). */
export function remoteAddressOf(req: IncomingMessage | Http2ServerRequest): string | undefined {
  return socketOf(req)?.remoteAddress;
}

/** The connection's socket: HTTP/2's session's, or HTTP/1.1's own. */
function socketOf(req: IncomingMessage | Http2ServerRequest) {
  return "stream" in req ? req.stream.session?.socket : req.socket;
}

const cache = new WeakMap<object, PeerIdentity | undefined>();

/** The peer of a request's connection (HTTP/1.1 or HTTP/2), or undefined without a client certificate. */
export function peerOf(req: IncomingMessage | Http2ServerRequest): PeerIdentity | undefined {
  const socket = socketOf(req) as TLSSocket | undefined;
  if (!socket || !("encrypted" in socket) || !socket.encrypted) return undefined;
  if (cache.has(socket)) return cache.get(socket);
  const cert = socket.getPeerCertificate();
  let peer: PeerIdentity | undefined;
  if (cert && Object.keys(cert).length > 0) {
    const cn = cert.subject?.CN;
    const names = subjectAltNames(cert.subjectaltname ?? "");
    peer = { verified: socket.authorized, identities: [...names, ...(typeof cn === "string" && cn ? [`CN=${cn}`] : [])] };
  }
  cache.set(socket, peer);
  return peer;
}

/**
 * Node joins the names with ", " and JSON-quotes a value holding a comma or a quote
 * (so a crafted name cannot pose as two).
 */
export function subjectAltNames(text: string): string[] {
  const out: string[] = [];
  const re = /([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/gy;
  let m: RegExpExecArray | null;
  while (re.lastIndex < text.length && (m = re.exec(text))) {
    let value = m[2];
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        continue;
      }
    }
    out.push(`${m[1]}:${value}`);
  }
  return out;
}
