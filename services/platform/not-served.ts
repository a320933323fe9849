/**
 * The answer to a call of a service or method this server does not serve. connect-es answers
 * a bare HTTP 404, which gRPC clients show as "UNIMPLEMENTED: HTTP 404"; a process may serve
 * one service only (a pod per service), so a client pointed at the wrong one is told, in its
 * protocol, UNIMPLEMENTED with an ErrorInfo naming what this server does serve. A caller
 * whose credentials do not hold is told that instead, as on any call.
 */
import type { DescService } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, endStreamFlag, endStreamToJson, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import type { AuthenticateFirst } from "./authenticate.ts";
import { rpcError } from "./errors.ts";
import { authorizationFields, peerOf, remoteAddressOf } from "./peer.ts";

export const NotServedReason = {
  SERVICE_NOT_SERVED: "SERVICE_NOT_SERVED",
  METHOD_NOT_FOUND: "METHOD_NOT_FOUND",
} as const;

/** Why `path` (/package.Service/Method) is not served by a server of `services`; undefined when it is not an RPC path. */
export function notServedError(path: string, services: DescService[]): ConnectError | undefined {
  const match = path.match(/^\/([\w.]+)\/(\w+)$/);
  if (!match) return undefined;
  const [, service, method] = match;
  const served = services.find((s) => s.typeName === service);
  if (served) {
    return rpcError(Code.Unimplemented, NotServedReason.METHOD_NOT_FOUND, `${service} has no method ${method}`, { service, method, methods: served.methods.map((m) => m.name).join(",") });
  }
  const names = services.map((s) => s.typeName);
  return rpcError(Code.Unimplemented, NotServedReason.SERVICE_NOT_SERVED, `${service} is not served here; this server serves ${names.join(", ")}`, { service, served: names.join(",") });
}

/**
 * connect-node's `fallback`: the error of `notServedError` in the request's protocol; a plain
 * 404 for what is no RPC. `onRefused` is told of each (no interceptor, so no audit, sees them).
 */
export function answerNotServed(
  services: DescService[],
  authenticate?: AuthenticateFirst,
  onRefused?: (path: string, err: ConnectError, remote: string | undefined) => void,
): NonNullable<ConnectNodeAdapterOptions["fallback"]> {
  return async (req, res) => {
    const type = req.headers["content-type"] ?? "";
    const path = new URL(req.url ?? "/", "http://x").pathname;
    let err = req.method === "POST" ? notServedError(path, services) : undefined;
    req.resume();
    if (err && authenticate) {
      const header = new Headers(Object.entries(req.headers).filter(([k, v]) => !k.startsWith(":") && typeof v === "string") as [string, string][]);
      err = (await authenticate(path.split("/")[1], { header, peer: peerOf(req), authorizationFields: authorizationFields(req) })) ?? err;
    }
    if (err) onRefused?.(path, err, remoteAddressOf(req));
    const answer = (status: number, headers: Record<string, string>, body?: Uint8Array, trailers?: Headers) => {
      res.writeHead(status, headers);
      if (body) res.write(body);
      if (trailers) res.addTrailers(Object.fromEntries(trailers));
      res.end();
    };
    if (!err) {
      answer(404, {});
    } else if (type.startsWith("application/grpc-web")) {
      answer(200, { "content-type": type }, encodeEnvelope(trailerFlag, trailerSerialize(setTrailerStatus(new Headers(), err))));
    } else if (type.startsWith("application/grpc")) {
      answer(200, { "content-type": type }, undefined, setTrailerStatus(new Headers(), err));
    } else if (type.startsWith("application/connect+")) {
      answer(200, { "content-type": type }, encodeEnvelope(endStreamFlag, new TextEncoder().encode(JSON.stringify(endStreamToJson(new Headers(), err, undefined)))));
    } else {
      answer(codeToHttpStatus(err.code), { "content-type": "application/json" }, errorToJsonBytes(err, undefined));
    }
  };
}
