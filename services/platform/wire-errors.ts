/**
 * connect-es refuses some requests in its protocol layer, before any interceptor runs: a
 * message that does not decode or decompress (as INTERNAL, though the bytes are the
 * client's), one over the size limit, an unknown compression, a malformed timeout. Such errors carry no
 * google.rpc.ErrorInfo. `withWireErrors` wraps a route's handler and rewrites them where each
 * protocol puts its status (gRPC trailers, gRPC-Web's trailer frame, Connect's JSON error or
 * end-of-stream message), so that they read like every other refusal of the server. A caller
 * whose credentials do not hold gets the authentication error instead, as for any call.
 *
 * It also writes every gRPC and gRPC-Web grpc-message as the gRPC spec encodes it: connect-es
 * percent-encodes with encodeURIComponent, commas and semicolons too, and grpc-js decodes
 * with decodeURI, which leaves those, so its callers read "%2C" in every message.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createAsyncIterable, encodeEnvelope, type UniversalHandler, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, endStreamFlag, endStreamFromJson, endStreamToJson, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { AuthenticateFirst } from "./authenticate.ts";
import { invalidArgument, rpcError } from "./errors.ts";
import { callCancelledError, cutBy } from "./aborted-calls.ts";
import { AUTHORIZATION_FIELDS, PEER, REQUEST_RESET } from "./peer.ts";

export const WireReason = {
  MESSAGE_UNDECODABLE: "MESSAGE_UNDECODABLE",
  MESSAGE_TOO_LARGE: "MESSAGE_TOO_LARGE",
  PROTOCOL_ERROR: "PROTOCOL_ERROR",
} as const;

export interface WireErrorOptions {
  maxMessageBytes: number;
  /** Called once per rewritten refusal, to log and trace it: no interceptor saw the call. */
  onError?: (method: DescMethod, error: ConnectError, requestHeader: Headers) => void;
  authenticate?: AuthenticateFirst;
}

/** `handler`, answering its protocol-layer refusals with the server's ErrorInfo. */
export function withWireErrors(handler: UniversalHandler, options: WireErrorOptions): UniversalHandler {
  const { method } = handler;
  const wrapped = async (req: Parameters<UniversalHandler>[0]) =>
    rewrite(await handler(req), async (err: ConnectError) => {
      // Answered past the protocol layer (the interceptors traced and counted it).
      if (err.findDetails(ErrorInfoSchema).length > 0) return undefined;
      const explained = explainWireError(err, method, options.maxMessageBytes);
      // What the client sent is at fault whatever came after (a message too large, or not
      // decodable); a protocol error or an unexplained one may be the client's cut instead.
      const sent = explained && explained.findDetails(ErrorInfoSchema)[0]?.reason !== WireReason.PROTOCOL_ERROR;
      if (!sent && (await cutByClient(req, err))) {
        const cut = req.signal.aborted ? cutBy(req.signal.reason, undefined) : callCancelledError();
        options.onError?.(method, cut, req.header);
        return cut;
      }
      if (!explained) return undefined;
      const refused = (await options.authenticate?.(method.parent.typeName, { header: req.header, peer: req.contextValues?.get(PEER), authorizationFields: req.contextValues?.get(AUTHORIZATION_FIELDS) })) ?? explained;
      options.onError?.(method, refused, req.header);
      return refused;
    });
  return Object.assign(wrapped, handler);
}

/**
 * Whether the client cancelled the call (or its deadline passed) rather than sent a bad
 * request. A Node client's cancel ends its request stream and resets it just after: a unary
 * request that ends without its message is given a moment for that reset to arrive, so a
 * cancel is not counted as the client's protocol error.
 */
async function cutByClient(req: Parameters<UniversalHandler>[0], err: ConnectError): Promise<boolean> {
  const reset = req.contextValues?.get(REQUEST_RESET) ?? (() => false);
  if (req.signal.aborted || reset()) return true;
  if (!err.rawMessage.startsWith("protocol error: missing input message")) return false;
  await new Promise((resolve) => setTimeout(resolve, RESET_GRACE_MS));
  return req.signal.aborted || reset();
}

/** How long a request that ended without its message waits for the client's reset (see cutByClient). */
const RESET_GRACE_MS = 50;

/** The server's version of a protocol-layer error; undefined for errors that already carry an ErrorInfo or that no request caused. */
export function explainWireError(err: ConnectError, method: DescMethod, maxMessageBytes: number): ConnectError | undefined {
  if (err.findDetails(ErrorInfoSchema).length > 0) return undefined;
  const message = err.rawMessage;
  const input = method.input.typeName;
  // protobuf-es: "premature EOF", "invalid wire type", "cannot decode field T.f from JSON: ...", "... key "k" is unknown".
  if (message.startsWith("parse binary:") || (err.code === Code.InvalidArgument && message.startsWith("cannot decode"))) {
    // A top-level field is named; a nested one has no path in the message, so the whole request is.
    const unknown = message.match(/^cannot decode message ([\w.]+) from JSON: key "([^"]*)" is unknown$/);
    const wrong = message.match(/^cannot decode field ([\w.]+)\.(\w+) from JSON: (.*)$/s);
    const violation =
      unknown?.[1] === input ? { field: unknown[2], description: `is not a field of ${input}` }
      : wrong?.[1] === input ? { field: wrong[2], description: wrong[3] }
      : (badEnumValue(message, method) ?? { field: "", description: `the request is not a valid ${input} (${message})` });
    return invalidArgument([violation], WireReason.MESSAGE_UNDECODABLE, { message_type: input });
  }
  if (err.code === Code.ResourceExhausted && message.includes("readMaxBytes")) {
    // connect-es: "message size <n> is larger than configured readMaxBytes <max>".
    const size = message.match(/message size (\d+)/)?.[1];
    const said = `${size ? `the request message is ${size} bytes, more than` : "the request message is larger than"} the ${maxMessageBytes} bytes this server reads; send less per message (uploads stream chunks)`;
    return rpcError(Code.ResourceExhausted, WireReason.MESSAGE_TOO_LARGE, said, { max_bytes: String(maxMessageBytes), ...(size ? { message_bytes: size } : {}) });
  }
  // connect-es calls these INTERNAL too, though the client's bytes caused them.
  const clientsFault = err.code === Code.Internal && /^(received compressed envelope, but do not know how to decompress|decompression failed)$/.test(message);
  if (err.code === Code.InvalidArgument || clientsFault) return invalidArgument([{ field: "", description: message }], WireReason.PROTOCOL_ERROR);
  if (err.code === Code.Unimplemented) return rpcError(err.code, WireReason.PROTOCOL_ERROR, message);
  return undefined;
}

type Explain = (err: ConnectError) => Promise<ConnectError | undefined>;

const GRPC_MESSAGE = "grpc-message";

/**
 * A percent-encoded grpc-message encoded again as PROTOCOL-HTTP2.md's Status-Message: its
 * UTF-8 bytes, with only those outside printable ASCII, and "%", as %XX (and edge spaces,
 * which HTTP/2 field values may not have).
 */
export function specPercentEncoded(encoded: string): string {
  let text: string;
  try {
    text = decodeURIComponent(encoded);
  } catch {
    return encoded;
  }
  const bytes = new TextEncoder().encode(text);
  let out = "";
  bytes.forEach((b, i) => {
    const plain = b >= 0x20 && b <= 0x7e && b !== 0x25 && !(b === 0x20 && (i === 0 || i === bytes.length - 1));
    out += plain ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  });
  return out;
}

/**
 * protobuf-es names the enum, not the field, of a value that is none of its names: the
 * request's one top-level field of that enum, with the names it takes.
 */
function badEnumValue(message: string, method: DescMethod): { field: string; description: string } | undefined {
  const bad = message.match(/^cannot decode enum ([\w.]+) from JSON: (.*)$/s);
  const fields = bad ? method.input.fields.filter((f) => (f.fieldKind === "enum" || (f.fieldKind === "list" && f.listKind === "enum")) && f.enum.typeName === bad[1]) : [];
  if (fields.length !== 1) return undefined;
  const names = fields[0].enum!.values.map((v) => v.name).join(", ");
  return { field: fields[0].name, description: `${bad![2]} is not a value of ${bad![1]} (one of ${names})` };
}

function rewrite(res: UniversalServerResponse, explain: Explain): UniversalServerResponse | Promise<UniversalServerResponse> {
  const body = res.body;
  if (!body || typeof body !== "object" || !(Symbol.asyncIterator in body)) return res;
  const type = new Headers(res.header).get("content-type") ?? "";
  // gRPC's status is in its trailer: rewritten in place, true when it was.
  const explainTrailer = async (trailer: Headers) => {
    const err = findTrailerError(trailer);
    const explained = err && (await explain(err));
    if (explained) setTrailerStatus(trailer, explained);
    const message = trailer.get(GRPC_MESSAGE);
    if (message !== null) trailer.set(GRPC_MESSAGE, specPercentEncoded(message));
    return explained !== undefined || message !== trailer.get(GRPC_MESSAGE);
  };
  if (type.startsWith("application/grpc-web")) {
    return { ...res, body: mapEnvelopes(body, trailerFlag, async (data) => {
      const trailer = trailerParse(data);
      return (await explainTrailer(trailer)) ? trailerSerialize(trailer) : undefined;
    }) };
  }
  if (type.startsWith("application/grpc")) {
    const trailer = res.trailer instanceof Headers ? res.trailer : undefined;
    if (!trailer) return res;
    // The status is written into the trailer once the body has ended.
    return { ...res, body: (async function* () {
      yield* body;
      await explainTrailer(trailer);
    })() };
  }
  if (type.startsWith("application/connect+")) {
    return { ...res, body: mapEnvelopes(body, endStreamFlag, async (data) => {
      const end = endStreamFromJson(data);
      const explained = end.error && (await explain(end.error));
      return explained && new TextEncoder().encode(JSON.stringify(endStreamToJson(end.metadata, explained, undefined)));
    }) };
  }
  // Connect unary: an error is a small JSON body (uncompressed at this size) with an HTTP error status.
  if (res.status === 200 || !type.startsWith("application/json")) return res;
  return rewriteUnary(res, body, explain);
}

async function rewriteUnary(res: UniversalServerResponse, body: AsyncIterable<Uint8Array>, explain: Explain) {
  const parts: Uint8Array[] = [];
  for await (const part of body) parts.push(part);
  const bytes = Buffer.concat(parts);
  const header = new Headers(res.header);
  const explained = header.has("content-encoding") ? undefined : await explain(errorFromJsonBytes(bytes, undefined, new ConnectError("", Code.Unknown)));
  if (!explained) return { ...res, body: createAsyncIterable([bytes]) };
  const fixed = errorToJsonBytes(explained, undefined);
  header.set("content-length", String(fixed.byteLength));
  return { ...res, status: codeToHttpStatus(explained.code), header, body: createAsyncIterable([fixed]) };
}

/**
 * The body's envelopes (one per chunk, as connect-es writes them), with the uncompressed
 * envelope of `flag` replaced by what `replace` makes of its data, when it makes anything.
 */
async function* mapEnvelopes(body: AsyncIterable<Uint8Array>, flag: number, replace: (data: Uint8Array) => Promise<Uint8Array | undefined>) {
  for await (const chunk of body) {
    const length = chunk.length >= 5 ? new DataView(chunk.buffer, chunk.byteOffset).getUint32(1) : -1;
    const data = chunk[0] === flag && length === chunk.length - 5 ? await replace(chunk.subarray(5)) : undefined;
    yield data ? encodeEnvelope(flag, data) : chunk;
  }
}
