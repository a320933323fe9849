// Requests refused by connect-es's protocol layer, before any interceptor: bytes that do not
// decode, JSON that names no field of the message, an unknown compression, a malformed
// timeout. Every RPC of the suite, over gRPC, gRPC-Web and Connect, answers them with the
// code the client caused (INVALID_ARGUMENT, not connect's INTERNAL) and the suite's
// ErrorInfo, logs them, and keeps serving; calls that succeed or fail in a handler pass
// through unchanged.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { create, toBinary, type DescMethod, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { endStreamFlag, endStreamFromJson, errorFromJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse } from "@connectrpc/connect/protocol-grpc-web";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetFormat } from "../../gen/vaccine/v1/common_pb.ts";
import { DatasetService, UploadDatasetRequestSchema } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { ERROR_DOMAIN, rpcError } from "../../services/platform/errors.ts";
import { createLogger } from "../../services/platform/log.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { explainWireError, specPercentEncoded } from "../../services/platform/wire-errors.ts";
import { accessPolicy } from "../../services/suite/access.ts";
import { errorDetails, rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const logged: Record<string, unknown>[] = [];
let suite: TestSuite;
beforeAll(async () => {
  const logger = createLogger("warn", { write: (line: string) => void logged.push(JSON.parse(line)) });
  suite = await startSuite({ server: { logger } });
});
afterAll(() => suite?.close());

const METHODS = [AlignService, FineTuneService, EmbedService, ScoreService, DatasetService, CheckpointService, Health].flatMap((s) => s.methods);
/** Field 1, length-delimited, with a length varint cut short: no message of any type decodes from it. */
const UNDECODABLE = new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

const envelope = (flags: number, data: Uint8Array) => {
  const out = new Uint8Array(5 + data.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, data.length);
  out.set(data, 5);
  return out;
};

function envelopes(body: Uint8Array): { flags: number; data: Uint8Array }[] {
  const out = [];
  for (let at = 0; at < body.length; ) {
    const length = new DataView(body.buffer, body.byteOffset + at).getUint32(1);
    out.push({ flags: body[at], data: body.subarray(at + 5, at + 5 + length) });
    at += 5 + length;
  }
  return out;
}

/** One HTTP/2 POST as a client of the protocol would send it; the error the answer carries, decoded the way that protocol's clients decode it. */
interface Call {
  headers?: Record<string, string>;
  json?: boolean;
  /** Messages sent before this one (a client stream). */
  before?: Uint8Array[];
  flags?: number;
  url?: string;
}

async function refusal(protocol: "grpc" | "grpc-web" | "connect", method: DescMethod, message: Uint8Array, call: Call = {}): Promise<ConnectError | undefined> {
  const { headers = {}, json = false, before = [], flags = 0, url = suite.server.url } = call;
  const streaming = method.methodKind !== "unary";
  const contentType = {
    grpc: json ? "application/grpc+json" : "application/grpc",
    "grpc-web": json ? "application/grpc-web+json" : "application/grpc-web+proto",
    connect: streaming ? (json ? "application/connect+json" : "application/connect+proto") : json ? "application/json" : "application/proto",
  }[protocol];
  const body = protocol === "connect" && !streaming ? message : Buffer.concat([...before.map((m) => envelope(0, m)), envelope(flags, message)]);
  const session = http2.connect(url);
  try {
    const req = session.request({ ":method": "POST", ":path": `/${method.parent.typeName}/${method.name}`, "content-type": contentType, te: "trailers", ...headers });
    req.end(body);
    const [head, trailers, bytes] = await new Promise<[http2.IncomingHttpHeaders, http2.IncomingHttpHeaders, Uint8Array]>((resolve, reject) => {
      let head: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on("response", (h) => (head = h));
      req.on("trailers", (t) => (trailers = t));
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => resolve([head, trailers, Buffer.concat(chunks)]));
      req.on("error", reject);
    });
    const asHeaders = (h: http2.IncomingHttpHeaders) => new Headers(Object.entries(h).filter(([k]) => !k.startsWith(":")) as [string, string][]);
    if (protocol === "grpc") return findTrailerError(asHeaders({ ...head, ...trailers }));
    const frames = envelopes(bytes);
    if (protocol === "grpc-web") return findTrailerError(trailerParse(frames.find((f) => f.flags === trailerFlag)!.data));
    if (streaming) return endStreamFromJson(frames.find((f) => f.flags === endStreamFlag)!.data).error;
    return Number(head[":status"]) === 200 ? undefined : errorFromJsonBytes(bytes, undefined, new ConnectError("no error body", Code.Unknown));
  } finally {
    session.close();
  }
}

const serving = async () => (await createClient(Health, createGrpcTransport({ baseUrl: suite.server.url })).check({ service: "" })).status;

describe("a request that does not decode", () => {
  it.each(["grpc", "grpc-web", "connect"] as const)("is INVALID_ARGUMENT with MESSAGE_UNDECODABLE on every RPC over %s", async (protocol) => {
    logged.length = 0;
    for (const method of METHODS) {
      const e = errorDetails(await refusal(protocol, method, UNDECODABLE));
      expect(e.code, method.name).toBe(Code.InvalidArgument);
      expect(e.message, method.name).toMatch(new RegExp(`^the request is not a valid ${method.input.typeName.replaceAll(".", "\\.")} \\(parse binary: premature EOF\\)$`));
      expect(e.info, method.name).toMatchObject({ reason: "MESSAGE_UNDECODABLE", domain: ERROR_DOMAIN, metadata: { message_type: method.input.typeName } });
      expect(e.badRequest?.fieldViolations.map((v) => v.field), method.name).toEqual([""]);
    }
    // No interceptor saw these calls: the server's log is where an operator finds them.
    const lines = logged.filter((l) => l.msg === "request refused before its handler");
    expect(lines.map((l) => l.method)).toEqual(METHODS.map((m) => `${m.parent.typeName}/${m.name}`));
    expect(lines[0]).toMatchObject({ outcome: "INVALID_ARGUMENT", reason: "MESSAGE_UNDECODABLE" });
    // No tracer is installed here, so no trace id to name (rpc-tracing.test.ts has the span).
    expect(lines[0].trace_id).toBeUndefined();
    expect(await serving()).toBe(S.SERVING);
  });

  it("random bytes, on a random RPC and protocol, succeed or get a code the client can act on, with the ErrorInfo", async () => {
    const outcomes = new Map<string, number>();
    await fc.assert(
      // Health's Watch streams until the client leaves, when the bytes decode.
      fc.asyncProperty(fc.constantFrom(...METHODS.filter((m) => m !== Health.method.watch)), fc.constantFrom("grpc", "grpc-web", "connect"), fc.oneof({ arbitrary: fc.uint8Array({ maxLength: 48 }), weight: 9 }, { arbitrary: fc.constant(new Uint8Array()), weight: 1 }), async (method, protocol, bytes) => {
        const err = await refusal(protocol, method, bytes);
        const e = err && errorDetails(err);
        const outcome = e ? `${Code[e.code]} ${e.info?.reason}` : "OK";
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        if (!e) return;
        expect([Code.Internal, Code.Unknown, Code.DataLoss, Code.Unavailable], `${method.name} ${outcome} ${e.message}`).not.toContain(e.code);
        expect(e.info?.domain, `${method.name} ${e.message}`).toBe(ERROR_DOMAIN);
      }),
      { numRuns: 300 },
    );
    // Both kinds happened: bytes that decode (and reach a handler) and bytes that do not.
    expect(outcomes.get("InvalidArgument MESSAGE_UNDECODABLE")).toBeGreaterThan(100);
    expect(outcomes.get("OK")).toBeGreaterThan(0);
    expect(outcomes.get("InvalidArgument FIELD_INVALID")).toBeGreaterThan(0);
    expect(await serving()).toBe(S.SERVING);
  });

  it("is refused the same way in the middle of an upload, after messages that decoded", async () => {
    const upload = (content: MessageInitShape<typeof UploadDatasetRequestSchema>["content"]) => toBinary(UploadDatasetRequestSchema, create(UploadDatasetRequestSchema, { content }));
    const before = [upload({ case: "metadata", value: { displayName: "cut", format: DatasetFormat.REFUSAL } }), upload({ case: "chunk", value: new TextEncoder().encode('{"prompt": "a", "response": "b"}\n') })];
    for (const protocol of ["grpc", "grpc-web", "connect"] as const) {
      const e = errorDetails(await refusal(protocol, DatasetService.method.uploadDataset, UNDECODABLE, { before }));
      expect(e, protocol).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE", metadata: { message_type: "vaccine.v1.UploadDatasetRequest" } } });
    }
    // Nothing of the cut uploads was kept.
    expect((await createClient(DatasetService, createGrpcTransport({ baseUrl: suite.server.url })).listDatasets({})).datasets.filter((d) => d.displayName === "cut")).toEqual([]);
  });

  it("names the field when JSON gives it the wrong type or names no field of the message", async () => {
    const embed = EmbedService.method.embed;
    const wrongType = errorDetails(await refusal("connect", embed, new TextEncoder().encode('{"texts": 5}'), { json: true }));
    expect(wrongType).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE", metadata: { fields: "texts" } } });
    expect(wrongType.badRequest?.fieldViolations[0]).toMatchObject({ field: "texts", description: "expected Array, got 5" });
    // A misspelt field would otherwise be dropped and the call run with the default.
    for (const protocol of ["grpc", "connect"] as const) {
      const misspelt = errorDetails(await refusal(protocol, embed, new TextEncoder().encode('{"txets": ["a"]}'), { json: true }));
      expect(misspelt).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE", metadata: { fields: "txets" } } });
      expect(misspelt.message).toBe("txets: is not a field of vaccine.v1.EmbedRequest");
    }
    // protobuf-es names the enum, not the field, of a value that is none of the enum's names.
    const badEnum = errorDetails(await refusal("connect", embed, new TextEncoder().encode('{"texts": ["a"], "pooling": "AVG"}'), { json: true }));
    expect(badEnum).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE", metadata: { fields: "pooling" } } });
    expect(badEnum.message).toMatch(/^pooling: "AVG" is not a value of vaccine\.v1\.Pooling \(one of POOLING_UNSPECIFIED, POOLING_MEAN, /);
    const notJson = errorDetails(await refusal("connect", embed, new TextEncoder().encode("{texts"), { json: true }));
    expect(notJson).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE" } });
  });
});

describe("other protocol refusals", () => {
  it("an unknown compression is UNIMPLEMENTED with PROTOCOL_ERROR", async () => {
    const listAlign = AlignService.method.listAlignJobs;
    for (const [protocol, header] of [["grpc", "grpc-encoding"], ["connect", "content-encoding"]] as const) {
      const e = errorDetails(await refusal(protocol, listAlign, new Uint8Array(), { headers: { [header]: "zstd" } }));
      expect(e.code, protocol).toBe(Code.Unimplemented);
      expect(e.message, protocol).toMatch(/unknown compression "zstd"/);
      expect(e.info, protocol).toMatchObject({ reason: "PROTOCOL_ERROR", domain: ERROR_DOMAIN });
    }
  });

  it("a compressed message that does not decompress is INVALID_ARGUMENT with PROTOCOL_ERROR, not connect's INTERNAL", async () => {
    const listAlign = AlignService.method.listAlignJobs;
    const gzip = gzipSync(Buffer.from("a message"));
    const cases = [
      ["compressed flag without an encoding", {}, 1, gzip, /received compressed envelope, but do not know how to decompress/],
      ["cut-off gzip", { "grpc-encoding": "gzip" }, 1, gzip.subarray(0, gzip.length - 6), /decompression failed/],
      ["not gzip at all", { "grpc-encoding": "gzip" }, 1, UNDECODABLE, /decompression failed/],
    ] as const;
    for (const [name, headers, flags, data, message] of cases) {
      const e = errorDetails(await refusal("grpc", listAlign, data, { headers, flags }));
      expect(e, name).toMatchObject({ code: Code.InvalidArgument, info: { reason: "PROTOCOL_ERROR", domain: ERROR_DOMAIN } });
      expect(e.message, name).toMatch(message);
    }
  });

  it("a malformed gRPC timeout is INVALID_ARGUMENT with PROTOCOL_ERROR", async () => {
    const e = errorDetails(await refusal("grpc", AlignService.method.listAlignJobs, new Uint8Array(), { headers: { "grpc-timeout": "soon" } }));
    expect(e).toMatchObject({ code: Code.InvalidArgument, info: { reason: "PROTOCOL_ERROR" } });
    expect(e.badRequest?.fieldViolations[0].description).toMatch(/invalid grpc timeout value: soon/);
  });

  it("an oversized message is RESOURCE_EXHAUSTED with MESSAGE_TOO_LARGE and the limit", async () => {
    // connect-node's client resets its own stream with ENHANCE_YOUR_CALM when more than its
    // session memory (10 MB by default) waits unsent, as it does once the server stops reading.
    const transport = createGrpcTransport({ baseUrl: suite.server.url, nodeOptions: { maxSessionMemory: 64 } });
    const e = await rpcFailure(() => createClient(EmbedService, transport).embed({ texts: ["x".repeat(17 << 20)] }));
    expect(e).toMatchObject({ code: Code.ResourceExhausted, info: { reason: "MESSAGE_TOO_LARGE", metadata: { max_bytes: String(16 << 20) } } });
    expect(e.message).toMatch(/^the request message is \d+ bytes, more than the 16777216 bytes this server reads/);
    expect(Number(e.info?.metadata.message_bytes)).toBeGreaterThan(17 << 20);
  });
});

describe("calls that reach their handler", () => {
  it.each([
    ["gRPC", createGrpcTransport],
    ["gRPC-Web", createGrpcWebTransport],
    ["Connect", createConnectTransport],
  ] as const)("answer as before over %s: results, and the handler's own errors with their details", async (_name, make) => {
    const transport = make({ baseUrl: suite.server.url, httpVersion: "2" });
    expect((await createClient(CheckpointService, transport).getCheckpoint({ checkpoint: suite.base })).checkpoint?.ref?.digest).toBe(suite.base.digest);
    const missing = await rpcFailure(() => createClient(DatasetService, transport).getDataset({ uri: `store://datasets/${"0".repeat(64)}` }));
    expect(missing).toMatchObject({ code: Code.NotFound, info: { domain: ERROR_DOMAIN } });
    const watch = async () => {
      for await (const _ of createClient(AlignService, transport).watchAlignJob({ jobId: "nope" }));
    };
    expect(await rpcFailure(watch)).toMatchObject({ code: Code.NotFound, info: { reason: "JOB_NOT_FOUND" } });
  });
});

describe("with authentication on", () => {
  // A caller without valid credentials learns no more of a request's form than reflection, which
  // is closed to it, tells: its message type and field names stay unsaid.
  const dir = mkdtempSync(join(tmpdir(), "vaccine-wire-auth-"));
  const lines: Record<string, unknown>[] = [];
  let secured: TestSuite;
  beforeAll(async () => {
    writeFileSync(join(dir, "tokens.json"), JSON.stringify({ [tokenHash("token-a")]: { tenant: "team-a", roles: ["reader"] } }));
    const logger = createLogger("warn", { write: (line: string) => void lines.push(JSON.parse(line)) });
    secured = await startSuite({ server: { logger, access: { policy: accessPolicy(), authenticator: await tokenAuthenticator(join(dir, "tokens.json"), logger) } } });
  });
  afterAll(async () => {
    await secured?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("answers a caller without valid credentials UNAUTHENTICATED, one with them the decode error; health stays open", async () => {
    const url = secured.server.url;
    const misspelt = new TextEncoder().encode('{"txets": ["a"]}');
    const embed = EmbedService.method.embed;
    for (const protocol of ["grpc", "grpc-web", "connect"] as const) {
      const none = errorDetails(await refusal(protocol, embed, UNDECODABLE, { url }));
      expect(none, protocol).toMatchObject({ code: Code.Unauthenticated, info: { reason: "CREDENTIALS_MISSING" } });
      const unknown = errorDetails(await refusal(protocol, embed, UNDECODABLE, { url, headers: { authorization: "Bearer token-z" } }));
      expect(unknown, protocol).toMatchObject({ code: Code.Unauthenticated, info: { reason: "TOKEN_UNKNOWN" } });
      const valid = errorDetails(await refusal(protocol, embed, UNDECODABLE, { url, headers: { authorization: "Bearer token-a" } }));
      expect(valid, protocol).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE", metadata: { message_type: "vaccine.v1.EmbedRequest" } } });
      expect(errorDetails(await refusal(protocol, Health.method.check, UNDECODABLE, { url })), protocol).toMatchObject({ code: Code.InvalidArgument, info: { reason: "MESSAGE_UNDECODABLE" } });
    }
    for (const protocol of ["grpc", "connect"] as const) {
      const none = errorDetails(await refusal(protocol, embed, misspelt, { url, json: true }));
      expect(none, protocol).toMatchObject({ code: Code.Unauthenticated, info: { reason: "CREDENTIALS_MISSING" } });
      expect(JSON.stringify(none), protocol).not.toMatch(/txets|EmbedRequest/);
      const valid = errorDetails(await refusal(protocol, embed, misspelt, { url, json: true, headers: { authorization: "Bearer token-a" } }));
      expect(valid.message, protocol).toBe("txets: is not a field of vaccine.v1.EmbedRequest");
    }
    // Each refusal is logged with what it was answered.
    const refused = lines.filter((l) => l.msg === "request refused before its handler");
    expect(refused).toHaveLength(16);
    expect(refused.filter((l) => l.reason === "CREDENTIALS_MISSING")).toHaveLength(5);
  });

  it("tells a caller without valid credentials nothing of the services and methods served", async () => {
    const url = secured.server.url;
    const unknownMethod = { ...EmbedService.method.embed, name: "Embedz" } as DescMethod;
    const unknownService = { ...EmbedService.method.embed, parent: { ...EmbedService, typeName: "vaccine.v1.NoSuchService" } } as DescMethod;
    for (const protocol of ["grpc", "grpc-web", "connect"] as const) {
      for (const method of [unknownMethod, unknownService]) {
        const none = errorDetails(await refusal(protocol, method, UNDECODABLE, { url }));
        expect(none, protocol).toMatchObject({ code: Code.Unauthenticated, info: { reason: "CREDENTIALS_MISSING" } });
        expect(JSON.stringify(none), protocol).not.toMatch(/CreateAlignJob|AlignService/);
      }
      const valid = errorDetails(await refusal(protocol, unknownMethod, UNDECODABLE, { url, headers: { authorization: "Bearer token-a" } }));
      expect(valid, protocol).toMatchObject({ code: Code.Unimplemented, info: { reason: "METHOD_NOT_FOUND", metadata: { method: "Embedz" } } });
    }
    // No interceptor (so no audit line) sees these calls: each is logged, with where it came from.
    const probes = lines.filter((l) => l.msg === "request refused before its handler" && String(l.method).endsWith("Embedz"));
    expect(probes.map((l) => l.outcome)).toEqual(["UNAUTHENTICATED", "UNIMPLEMENTED", "UNAUTHENTICATED", "UNIMPLEMENTED", "UNAUTHENTICATED", "UNIMPLEMENTED"]);
    expect(probes.every((l) => l.remote === "127.0.0.1" && l.method === "vaccine.v1.EmbedService/Embedz")).toBe(true);
  });
});

describe("explainWireError", () => {
  const method = EmbedService.method.embed;
  it("leaves errors that carry an ErrorInfo, and those no request caused", () => {
    expect(explainWireError(rpcError(Code.InvalidArgument, "FIELD_INVALID", "texts: bad"), method, 1)).toBeUndefined();
    expect(explainWireError(new ConnectError("client went away", Code.Canceled), method, 1)).toBeUndefined();
    expect(explainWireError(new ConnectError("internal error", Code.Internal), method, 1)).toBeUndefined();
  });

  it("names only top-level fields: a nested one is not a field of the request", () => {
    const nested = explainWireError(new ConnectError("cannot decode field vaccine.v1.CheckpointRef.uri from JSON: expected string", Code.InvalidArgument), method, 1);
    expect(nested?.findDetails(ErrorInfoSchema)[0]).toMatchObject({ reason: "MESSAGE_UNDECODABLE", metadata: { message_type: method.input.typeName } });
    expect(nested?.findDetails(ErrorInfoSchema)[0].metadata.fields).toBeUndefined();
  });
});

describe("specPercentEncoded", () => {
  it("encodes only what gRPC's Status-Message encodes: bytes outside printable ASCII, '%', and edge spaces", () => {
    expect(specPercentEncoded(encodeURIComponent('job "a,b; 100% café" not found'))).toBe('job "a,b; 100%25 caf%C3%A9" not found');
    expect(specPercentEncoded(encodeURIComponent(" line one\nline two "))).toBe("%20line one%0Aline two%20");
    expect(specPercentEncoded("already plain, as it is")).toBe("already plain, as it is");
    expect(specPercentEncoded("%E0%A4%A")).toBe("%E0%A4%A"); // not decodable: left as sent
  });

  it("gives back what decodeURIComponent reads as the same text, for any text", () => {
    fc.assert(fc.property(fc.string({ unit: "grapheme" }), (text) => decodeURIComponent(specPercentEncoded(encodeURIComponent(text))) === text));
  });
});
