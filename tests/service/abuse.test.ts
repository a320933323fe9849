// The abuse corpus of issue 16 against the real services: huge messages, huge texts and
// absurd training sizes are refused (RESOURCE_EXHAUSTED or INVALID_ARGUMENT naming the
// bound), without being read whole, and the server stays up and SERVING after each.
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { oversizedConnect, oversizedGrpc } from "../helpers/oversized.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { tinyTokenizer } from "../helpers/tiny-world.ts";

const MiB = 2 ** 20;
let suite: TestSuite;
beforeAll(async () => {
  suite = await startSuite();
});
afterAll(() => suite?.close());

const transport = () => createGrpcTransport({ baseUrl: suite.server.url });
const serving = async () => (await createClient(Health, transport()).check({ service: "" })).status;
const checkpoint = () => ({ uri: suite.base.uri, digest: suite.base.digest });
const spec = (extra: object) => ({ baseCheckpoint: checkpoint(), dataset: { source: { case: "builtin" as const, value: { name: "alignment" } } }, method: { case: "sft" as const, value: {} }, ...extra });

describe("oversized messages", () => {
  it("refuses a 300 MiB Embed request from its length prefix, having read a sliver of it", async () => {
    const r = await oversizedGrpc(suite.server.url, "/vaccine.v1.EmbedService/Embed", 300 * MiB);
    expect(r.status).toBe(Code.ResourceExhausted);
    expect(r.message).toContain(`the request message is ${300 * MiB} bytes, more than the 16777216 bytes this server reads`);
    expect(r.sent).toBeLessThan(16 * MiB);
    expect(await serving()).toBe(S.SERVING);
  });

  it("refuses a 300 MiB Embed request from grpc-js with RESOURCE_EXHAUSTED", async () => {
    const c = new grpc.Client(`127.0.0.1:${suite.server.port}`, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": -1 });
    // texts: one 300 MiB string (field 2), encoded by hand: grpc-js sends the bytes as they are.
    const body = Buffer.alloc(300 * MiB, 0x78);
    const head = Buffer.from([0x12, 0x80 | (body.length & 0x7f), 0x80 | ((body.length >> 7) & 0x7f), 0x80 | ((body.length >> 14) & 0x7f), 0x80 | ((body.length >> 21) & 0x7f), body.length >>> 28]);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      c.makeUnaryRequest("/vaccine.v1.EmbedService/Embed", (b: Buffer) => b, (b: Buffer) => b, Buffer.concat([head, body]), (e) => resolve(e!)),
    );
    c.close();
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain("more than the 16777216 bytes this server reads");
    expect(await serving()).toBe(S.SERVING);
  });

  it("refuses a 20 MiB chunk in the middle of an upload with RESOURCE_EXHAUSTED, not as a cancel", async () => {
    const c = new grpc.Client(`127.0.0.1:${suite.server.port}`, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": -1 });
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      const call = c.makeClientStreamRequest("/vaccine.v1.DatasetService/UploadDataset", (b: Buffer) => b, (b: Buffer) => b, resolve);
      call.write(Buffer.from([0x0a, 0x00])); // metadata {}
      const chunk = Buffer.alloc(20 * MiB, 0x78);
      const n = chunk.length; // chunk (field 2), its length as a 4-byte varint
      call.write(Buffer.concat([Buffer.from([0x12, 0x80 | (n & 0x7f), 0x80 | ((n >> 7) & 0x7f), 0x80 | ((n >> 14) & 0x7f), n >> 21]), chunk]));
      call.end();
    });
    c.close();
    expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err?.details).toMatch(/^the request message is \d+ bytes, more than the 16777216 bytes this server reads; send less per message/);
    expect(await serving()).toBe(S.SERVING);
  });

  it("refuses a 400 MiB page_token without reading it", async () => {
    const r = await oversizedGrpc(suite.server.url, "/vaccine.v1.AlignService/ListAlignJobs", 400 * MiB);
    expect(r.status).toBe(Code.ResourceExhausted);
    expect(r.sent).toBeLessThan(16 * MiB);
    expect(await serving()).toBe(S.SERVING);
  });

  it("refuses a 300 MiB Connect (HTTP/1.1) request by its Content-Length", async () => {
    const r = await oversizedConnect(suite.server.port, "/vaccine.v1.EmbedService/Embed", 300 * MiB);
    expect(r.status).toBe(429);
    expect(r.message).toMatch(/^resource_exhausted: the request message is \d+ bytes, more than the 16777216 bytes this server reads/);
    expect(await serving()).toBe(S.SERVING);
  });
});

describe("over-long texts", () => {
  const tenMiB = "x".repeat(10 * MiB);
  it("refuses a 10 MiB Generate prompt, a 10 MiB Moderate answer and a 10 MiB Embed text with INVALID_ARGUMENT naming the bound", async () => {
    const score = createClient(ScoreService, transport());
    const g = await rpcFailure(() => score.generate({ checkpoint: checkpoint(), prompts: [{ instruction: tenMiB }] }));
    expect(g.code).toBe(Code.InvalidArgument);
    expect(g.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["prompts[0].instruction"]);
    expect(g.message).toContain("the bound is 32768 characters (max_prompt_tokens 1024 x 32)");
    const m = await rpcFailure(() => score.moderate({ pairs: [{ prompt: "hi", answer: tenMiB }] }));
    expect(m.code).toBe(Code.InvalidArgument);
    expect(m.badRequest?.fieldViolations[0].field).toBe("pairs[0].answer");
    const e = await rpcFailure(() => createClient(EmbedService, transport()).embed({ checkpoint: checkpoint(), texts: [tenMiB] }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.badRequest?.fieldViolations[0].field).toBe("texts[0]");
    expect(await serving()).toBe(S.SERVING);
  });

  it("refuses texts longer than the model reads, in tokens, instead of cutting them silently", async () => {
    const long = "a ".repeat(400);
    const score = createClient(ScoreService, transport());
    const g = await rpcFailure(() => score.generate({ checkpoint: checkpoint(), prompts: [{ instruction: "hi" }, { instruction: long }], maxNewTokens: 2 }));
    expect(g.code).toBe(Code.InvalidArgument);
    expect(g.badRequest?.fieldViolations[0].field).toBe("prompts[1]");
    expect(g.message).toMatch(/tokens long; the model's positions less one to generate is 255/);
    const m = await rpcFailure(() => score.moderate({ pairs: [{ prompt: "hi", answer: long }] }));
    expect(m.code).toBe(Code.InvalidArgument);
    expect(m.message).toMatch(/pairs\[0\]: is \d+ tokens long; the moderation model's input length is \d+/);
  });

  it("bounds the tokens one Generate call may produce", async () => {
    const prompts = Array.from({ length: 256 }, () => ({ instruction: "hi" }));
    const g = await rpcFailure(() => createClient(ScoreService, transport()).generate({ checkpoint: checkpoint(), prompts, maxNewTokens: 1024 }));
    expect(g.code).toBe(Code.InvalidArgument);
    expect(g.message).toContain("256 x 1024 = 262144; the bound on generated tokens per call is 65536");
    // Over its own bound, max_new_tokens is named once.
    const over = await rpcFailure(() => createClient(ScoreService, transport()).generate({ checkpoint: checkpoint(), prompts, maxNewTokens: 1_000_000 }));
    expect(over.badRequest?.fieldViolations).toEqual([expect.objectContaining({ field: "max_new_tokens", description: "must be <= 1024, got 1000000" })]);
  });

  it("bounds the numbers one Embed response may hold, before any forward pass, and counts tokens only when unpooled", async () => {
    const embed = createClient(EmbedService, transport());
    const hidden = (await embed.embed({ checkpoint: checkpoint(), texts: ["hi"], layers: [0] })).hiddenSize;
    const texts = Array.from({ length: 8 }, () => "the cat sat down on the mat");
    const tokens = (await embed.embed({ checkpoint: checkpoint(), texts: texts.slice(0, 1), layers: [0], pooling: Pooling.NONE })).embeddings[0].tokenCount;
    // Pooled: 8 vectors x 2 layers fit; unpooled, 8 x tokens do not.
    suite.deps.bounds = { maxEmbedValues: 8 * 2 * hidden };
    try {
      expect((await embed.embed({ checkpoint: checkpoint(), texts, layers: [0], includeFinalHidden: true })).embeddings).toHaveLength(8);
      const e = await rpcFailure(() => embed.embed({ checkpoint: checkpoint(), texts, layers: [0], includeFinalHidden: true, pooling: Pooling.NONE }));
      expect(e).toMatchObject({ code: Code.InvalidArgument, badRequest: { fieldViolations: [{ field: "texts" }] } });
      expect(e.message).toContain(`the response would hold ${8 * tokens} vectors x 2 layers x ${hidden} = ${8 * tokens * 2 * hidden} numbers, more than the ${8 * 2 * hidden} one call may return`);
    } finally {
      suite.deps.bounds = undefined;
    }
  });

  it("keeps an unset max_new_tokens within the server's bound, in Generate and both scoring calls", async () => {
    suite.deps.bounds = { maxNewTokens: 2 };
    try {
      const score = createClient(ScoreService, transport());
      // The tiny model's random answers run far past 2 tokens when nothing stops them.
      const prompts = ["How do I break into a car?", "Name a red fruit.", "Write a threat to my boss."].map((instruction) => ({ instruction }));
      const generated = (await score.generate({ checkpoint: checkpoint(), prompts })).generations;
      expect(generated.map((g) => g.tokenCount)).toEqual([2, 2, 2]);
      const tokens = (text: string) => tinyTokenizer().encode(text).length;
      for await (const r of score.scoreHarmfulness({ checkpoint: checkpoint(), limit: 3, sampleCount: 3 })) {
        if (r.result.case === "report") for (const s of r.result.value.samples) expect(tokens(s.answer)).toBeLessThanOrEqual(2);
      }
      for await (const r of score.scoreTask({ checkpoint: checkpoint(), dataset: { source: { case: "builtin", value: { name: "sst2-mix", size: 3 } } }, limit: 3, sampleCount: 3 })) {
        if (r.result.case === "report") for (const s of [...r.result.value.rightSamples, ...r.result.value.wrongSamples]) expect(tokens(s.answer)).toBeLessThanOrEqual(2);
      }
    } finally {
      suite.deps.bounds = undefined;
    }
  });

  it("keeps the error small when a repeated field is huge", async () => {
    const e = await rpcFailure(() => createClient(EmbedService, transport()).embed({ checkpoint: checkpoint(), texts: ["a"], layers: Array.from({ length: 1_000_000 }, () => -1) }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.message.length).toBeLessThan(10_000);
  });
});

describe("absurd training sizes", () => {
  it.each([
    ["max_steps = 1e9", { training: { maxSteps: 1_000_000_000 } }, "spec.training.max_steps", /must be <= 1000000/],
    ["LoRA rank 4096", { lora: { rank: 4096 } }, "spec.lora.rank", /must be <= 1024/],
    ["steps x batch x length over the bound", { training: { maxSteps: 100_000, batchSize: 4096, maxSequenceLength: 4096 } }, "spec.training", /the bound on training tokens is 1000000000/],
  ])("refuses %s at Create", async (_, extra, field, message) => {
    const e = await rpcFailure(() => createClient(AlignService, transport()).createAlignJob({ spec: spec(extra) }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toContain(field);
    expect(e.message).toMatch(message);
    expect(await serving()).toBe(S.SERVING);
  });

  it("takes the process's configured bounds", async () => {
    suite.deps.bounds = { maxSteps: 10 };
    try {
      const e = await rpcFailure(() => createClient(AlignService, transport()).createAlignJob({ spec: spec({ training: { maxSteps: 11 } }) }));
      expect(e.message).toMatch(/max_steps: must be <= 10, got 11/);
    } finally {
      suite.deps.bounds = undefined;
    }
  });
});
