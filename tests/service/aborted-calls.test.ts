// Calls ended by an abort end with the abort's error and an ErrorInfo, never OK: a Watch cut by
// the client's deadline or by the server's shutdown (its handler returns quietly) would
// otherwise end like a Watch whose job ended. Raw gRPC, so the client's own deadline timer does
// not answer first.
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService, WatchAlignJobRequestSchema } from "../../gen/vaccine/v1/align_pb.ts";
import { ScoreHarmfulnessRequestSchema } from "../../gen/vaccine/v1/score_pb.ts";
import { abortedCalls, cutBy } from "../../services/platform/aborted-calls.ts";
import { rpcError, shuttingDown } from "../../services/platform/errors.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { errorDetails } from "../helpers/errors.ts";
import { rawGrpc } from "../helpers/raw-grpc.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { alignSpec } from "../helpers/tenants.ts";
import { putExamples } from "../helpers/tiny-store.ts";

const DATA = "store://datasets/aborted-calls.jsonl";

/** A suite training a job far longer than any test waits, and a raw Watch of it. */
async function withLongJob() {
  const suite = await startSuite();
  await putExamples(suite.deps.store, DATA);
  const align = createClient(AlignService, createGrpcTransport({ baseUrl: suite.server.url }));
  const { job } = await align.createAlignJob({ spec: alignSpec(suite.base, DATA, 5000, { checkpointEvery: 5000 }) });
  const watch = (headers: Record<string, string> = {}) =>
    rawGrpc(suite.server.url, "/vaccine.v1.AlignService/WatchAlignJob", toBinary(WatchAlignJobRequestSchema, create(WatchAlignJobRequestSchema, { jobId: job!.id })), headers);
  return { suite, align, id: job!.id, watch };
}

describe("calls ended by an abort", () => {
  let s: TestSuite;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
  });
  afterAll(() => s?.close());

  it("a Watch cut by the client's deadline ends DEADLINE_EXCEEDED, and so does a stream whose handler throws at it", async () => {
    const { suite, align, id, watch } = await withLongJob();
    s = suite;
    const cut = await watch({ "grpc-timeout": "400m" });
    expect(cut.bodyBytes).toBeGreaterThan(0);
    expect(cut.ms).toBeGreaterThanOrEqual(400);
    expect(errorDetails(cut.error)).toMatchObject({ code: Code.DeadlineExceeded, info: { reason: "DEADLINE_EXCEEDED" } });
    await align.cancelAlignJob({ jobId: id });
    // ScoreHarmfulness stops its generation at the deadline by throwing.
    const score = await rawGrpc(suite.server.url, "/vaccine.v1.ScoreService/ScoreHarmfulness", toBinary(ScoreHarmfulnessRequestSchema, create(ScoreHarmfulnessRequestSchema, { checkpoint: suite.base, limit: 50, maxNewTokens: 64 })), { "grpc-timeout": "300m" });
    expect(errorDetails(score.error)).toMatchObject({ code: Code.DeadlineExceeded, info: { reason: "DEADLINE_EXCEEDED" } });
  });

  it("a Watch cut by the server's shutdown ends UNAVAILABLE (retry elsewhere), not OK", async () => {
    const { suite, watch } = await withLongJob();
    const watching = watch();
    await new Promise((r) => setTimeout(r, 500));
    await suite.close();
    const cut = await watching;
    expect(cut.bodyBytes).toBeGreaterThan(0);
    expect(errorDetails(cut.error)).toMatchObject({ code: Code.Unavailable, info: { reason: "SERVER_SHUTTING_DOWN" } });
  });
});

describe("abortedCalls, called directly", () => {
  const call = (signal: AbortSignal, next: () => Promise<unknown>) => abortedCalls()(next as never)({ signal } as never);
  const aborted = (reason: unknown) => AbortSignal.abort(reason);
  const stream = (...messages: number[]) => ({ stream: true, message: (async function* () { yield* messages; })() });
  const drain = async (res: unknown) => {
    const out: number[] = [];
    for await (const m of (res as { message: AsyncIterable<number> }).message) out.push(m);
    return out;
  };

  it("passes a stream that ends before any abort, and a unary result", async () => {
    expect(await drain(await call(new AbortController().signal, async () => stream(1, 2)))).toEqual([1, 2]);
    expect(await call(new AbortController().signal, async () => ({ stream: false, message: 7 }))).toEqual({ stream: false, message: 7 });
  });

  it("ends a stream that ends quietly after the abort with the abort's error", async () => {
    const timedOut = new ConnectError("the operation timed out", Code.DeadlineExceeded);
    await expect(drain(await call(aborted(timedOut), async () => stream(1)))).rejects.toMatchObject({ code: Code.DeadlineExceeded, rawMessage: expect.stringMatching(/deadline passed/) });
    await expect(drain(await call(aborted(shuttingDown()), async () => stream(1)))).rejects.toMatchObject({ code: Code.Unavailable });
  });

  it("replaces a handler's error after the abort with the abort's, and keeps errors before it", async () => {
    await expect(call(aborted(new DOMException("gone", "AbortError")), async () => Promise.reject(new Error("read aborted")))).rejects.toMatchObject({ code: Code.Canceled });
    const own = rpcError(Code.NotFound, "JOB_NOT_FOUND", "no such job");
    await expect(call(new AbortController().signal, async () => Promise.reject(own))).rejects.toBe(own);
  });

  it("keeps an abort reason that carries its ErrorInfo", () => {
    const reason = rpcError(Code.DeadlineExceeded, "DEFAULT_DEADLINE_EXCEEDED", "the server's default");
    expect(cutBy(reason, undefined)).toBe(reason);
    expect(errorDetails(cutBy(new ConnectError("the operation timed out", Code.DeadlineExceeded), undefined)).info?.reason).toBe("DEADLINE_EXCEEDED");
  });

  it("keeps the call's own error when the abort gives no reason (a request stream over the size limit)", () => {
    const bare = new DOMException("This operation was aborted", "AbortError");
    const tooLarge = new ConnectError("message size 20971525 is larger than configured readMaxBytes 16777216", Code.ResourceExhausted);
    expect(cutBy(bare, tooLarge)).toBe(tooLarge);
    expect(errorDetails(cutBy(bare, new ConnectError("read aborted", Code.Canceled))).info?.reason).toBe("CANCELLED");
    // A client's cancel (an RST_STREAM) is the reason, whatever the handler threw after it.
    expect(cutBy(new ConnectError("stream reset", Code.Canceled), tooLarge).code).toBe(Code.Canceled);
  });
});
