// Property tests (fast-check) over the request validators and the handlers behind them:
// random and boundary messages are either accepted with every value within its documented
// bound, or refused with one INVALID_ARGUMENT carrying a BadRequest; nothing else escapes.
// Through the real server, no request produces INTERNAL or UNKNOWN, and the server stays up.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedRequestSchema, EmbedService, type EmbedRequest } from "../../gen/vaccine/v1/embed_pb.ts";
import { GenerateRequestSchema, ModerateRequestSchema, ScoreService, type GenerateRequest, type ModerateRequest } from "../../gen/vaccine/v1/score_pb.ts";
import { TrainingConfigSchema } from "../../gen/vaccine/v1/common_pb.ts";
import { AlignSpecSchema, FineTuneSpecSchema, type AlignSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { checkAlignSpec } from "../../services/align/service.ts";
import { checkFineTuneSpec } from "../../services/finetune/service.ts";
import { CHARS_PER_TOKEN_BOUND, type CallBounds } from "../../services/common/bounds.ts";
import { checkEmbedRequest, MAX_EMBED_LAYERS, MAX_EMBED_TEXTS } from "../../services/embed/service.ts";
import { checkLoraRank, checkTraining, checkTrainingSize, MAX_LORA_RANK } from "../../services/jobs/validate.ts";
import { checkPage, keyToken, pageByKey, RequestValidator, timeKey, tokenKey } from "../../services/platform/validate.ts";
import { checkGenerateRequest, checkModerateRequest, DEFAULT_NEW_TOKENS, MAX_BATCH } from "../../services/score/service.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

/** Small bounds, so that random values land on both sides of every one of them. */
const BOUNDS: CallBounds = { maxPromptTokens: 4, maxNewTokens: 8, maxGeneratedTokens: 32, maxEmbedValues: 1000, maxSteps: 1000, maxTrainingTokens: 100_000 };
const MAX_CHARS = BOUNDS.maxPromptTokens * CHARS_PER_TOKEN_BOUND;

// Numbers as a client can send them: int32 edges, the bounds and their neighbours, any double.
const int32 = fc.oneof(
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  fc.constantFrom(-1, 0, 1, 2, 4, 8, 9, 32, 33, 64, 65, 1000, 1001, 1024, 1025, 4096, 2 ** 31 - 1),
);
const double = fc.oneof(fc.double(), fc.constantFrom(0, -0, 1, 1e308, -1e-308, Number.NaN, Infinity, -Infinity, 0.5, 1 - 1e-16));
const optional = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
const text = fc.oneof(fc.string({ unit: "binary", maxLength: 40 }), fc.string({ minLength: MAX_CHARS - 2, maxLength: MAX_CHARS + 2 }));
const digest = fc.oneof(fc.string(), fc.stringMatching(/^sha256:[0-9a-f]{64}$/));
const checkpointRef = optional(fc.record({ uri: fc.oneof(fc.string(), fc.string({ minLength: 2040, maxLength: 2060 })), digest }));
/** Mostly plausible values with the wild ones mixed in, so that accepted requests are common too. */
const mostly = <T>(plausible: fc.Arbitrary<T>, wild: fc.Arbitrary<T>) => fc.oneof({ arbitrary: plausible, weight: 4 }, { arbitrary: wild, weight: 1 });
const goodRef = fc.record({ uri: fc.constant("store://checkpoints/x"), digest: fc.stringMatching(/^sha256:[0-9a-f]{64}$/) });
const shortText = fc.string({ maxLength: 20 });

/** Outcomes of the current property: both must occur, or the property tested one side only. */
const outcomes = { accepted: 0, refused: 0 };
function bothSides() {
  expect(outcomes.accepted, "accepted cases").toBeGreaterThan(10);
  expect(outcomes.refused, "refused cases").toBeGreaterThan(10);
  outcomes.accepted = outcomes.refused = 0;
}

/** Runs a validator: undefined when it accepted, else the error (which must be INVALID_ARGUMENT with field violations). */
function verdict(check: () => void): ConnectError | undefined {
  try {
    check();
    outcomes.accepted++;
    return undefined;
  } catch (err) {
    outcomes.refused++;
    expect(err).toBeInstanceOf(ConnectError);
    const ce = err as ConnectError;
    expect(ce.code).toBe(Code.InvalidArgument);
    const violations = ce.findDetails(BadRequestSchema)[0]?.fieldViolations ?? [];
    expect(violations.length).toBeGreaterThan(0);
    expect(violations.length).toBeLessThanOrEqual(101);
    return ce;
  }
}

const inInt = (v: number | undefined, min: number, max: number) => v === undefined || (Number.isInteger(v) && v >= min && v <= max);

describe("training spec validators", () => {
  const spec = fc.record({
    baseCheckpoint: checkpointRef,
    lora: optional(fc.record({ rank: optional(int32), alpha: optional(double), dropout: optional(double), targetModules: fc.array(fc.constantFrom("q_proj", "v_proj", "nope", ""), { maxLength: 3 }) })),
    training: optional(fc.record({
      learningRate: optional(double), epochs: optional(int32), maxSteps: optional(int32), batchSize: optional(int32), maxSequenceLength: optional(int32),
      warmupRatio: optional(double), weightDecay: optional(double), gradClip: optional(double), checkpointEvery: optional(int32),
    })),
  });

  it("accept only specs within the bounds", () => {
    fc.assert(
      fc.property(spec, fc.boolean(), (s, vaccine) => {
        const msg: AlignSpec = create(AlignSpecSchema, {
          ...s,
          dataset: { source: { case: "builtin", value: { name: "alignment" } } },
          method: vaccine ? { case: "vaccine", value: { rho: 2 } } : { case: "sft", value: {} },
        });
        if (verdict(() => checkAlignSpec(msg, BOUNDS))) return;
        const t = msg.training;
        expect(inInt(msg.lora?.rank, 1, MAX_LORA_RANK)).toBe(true);
        if (msg.lora?.alpha !== undefined) expect(msg.lora.alpha).toBeGreaterThan(0);
        expect(inInt(t?.maxSteps, 1, BOUNDS.maxSteps)).toBe(true);
        expect(inInt(t?.epochs, 1, BOUNDS.maxSteps)).toBe(true);
        expect(inInt(t?.batchSize, 1, 4096)).toBe(true);
        expect(inInt(t?.maxSequenceLength, 2, 65_536)).toBe(true);
        if (t?.learningRate !== undefined) expect(Number.isFinite(t.learningRate) && t.learningRate > 0).toBe(true);
        if (t?.maxSteps !== undefined) expect(t.maxSteps * (t.batchSize ?? 5) * (t.maxSequenceLength ?? 200)).toBeLessThanOrEqual(BOUNDS.maxTrainingTokens);
      }),
      { numRuns: 3000 },
    );
    bothSides();
  });

  it("bound the job's size once the dataset is known, and the rank by the model width", () => {
    fc.assert(
      fc.property(optional(int32), optional(int32), optional(int32), optional(int32), fc.integer({ min: 1, max: 1_000_000 }), optional(int32), fc.integer({ min: 1, max: 8192 }), (epochs, maxSteps, batchSize, maxSequenceLength, examples, rank, hidden) => {
        const t = create(TrainingConfigSchema, { epochs, maxSteps, batchSize, maxSequenceLength });
        const v = new RequestValidator();
        checkTraining(v, "spec.training", t, BOUNDS);
        if (verdict(() => v.check())) return; // the static checks come first
        const size = new RequestValidator();
        checkTrainingSize(size, "spec.training", "align", t, examples, BOUNDS);
        checkLoraRank(size, "spec.lora", "align", rank === undefined ? undefined : ({ rank, targetModules: [] } as never), hidden);
        if (verdict(() => size.check())) return;
        const batch = batchSize ?? 5;
        const steps = maxSteps ?? (epochs ?? 50) * Math.ceil(examples / batch);
        expect(steps).toBeLessThanOrEqual(BOUNDS.maxSteps);
        expect(steps * batch * (maxSequenceLength ?? 200)).toBeLessThanOrEqual(BOUNDS.maxTrainingTokens);
        expect(rank ?? 8).toBeLessThanOrEqual(hidden);
      }),
      { numRuns: 3000 },
    );
    bothSides();
  });

  it("accept only alignment methods within the bounds, naming the method's field otherwise", () => {
    const harmfulDataset = optional(
      fc.oneof(
        fc.record({ source: fc.record({ case: fc.constant("uri" as const), value: mostly(fc.constant("store://datasets/harmful.jsonl"), fc.constant("")) }) }),
        fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: mostly(fc.constant("harmful"), fc.constant("")), size: optional(int32) }) }) }),
      ),
    );
    const method = fc.oneof(
      fc.record({ case: fc.constant("tVaccine" as const), value: fc.record({ rho: optional(double), layers: optional(int32), resampleEvery: optional(int32), probeEvery: optional(int32), probeDataset: harmfulDataset }) }),
      fc.record({ case: fc.constant("booster" as const), value: fc.record({ lambda: optional(double), alpha: optional(double), harmfulDataset }) }),
      fc.record({ case: fc.constant("repnoise" as const), value: fc.record({ alpha: optional(double), beta: optional(double), harmfulDataset }) }),
    );
    const nonNegative = (x: number | undefined) => x === undefined || (Number.isFinite(x) && x >= 0);
    fc.assert(
      fc.property(method, (m) => {
        const msg = create(AlignSpecSchema, { baseCheckpoint: { uri: "store://checkpoints/x", digest: `sha256:${"0".repeat(64)}` }, dataset: { source: { case: "builtin", value: { name: "alignment" } } }, method: m });
        const err = verdict(() => checkAlignSpec(msg, BOUNDS));
        if (err) {
          const prefix = { tVaccine: "spec.t_vaccine.", booster: "spec.booster.", repnoise: "spec.repnoise." }[m.case];
          for (const v of err.findDetails(BadRequestSchema)[0].fieldViolations) expect(v.field.startsWith(prefix), v.field).toBe(true);
          return;
        }
        const dataset = msg.method.case === "tVaccine" ? msg.method.value.probeDataset : msg.method.case === "booster" || msg.method.case === "repnoise" ? msg.method.value.harmfulDataset : undefined;
        if (dataset) expect(dataset.source.case === "uri" ? dataset.source.value : dataset.source.value?.name).not.toBe("");
        if (msg.method.case === "tVaccine") {
          const t = msg.method.value;
          expect(nonNegative(t.rho)).toBe(true);
          expect(inInt(t.layers, 1, 4096)).toBe(true);
          expect(inInt(t.resampleEvery, 1, 1_000_000)).toBe(true);
          expect(inInt(t.probeEvery, 1, 1_000_000)).toBe(true);
        } else if (msg.method.case === "booster") {
          expect(nonNegative(msg.method.value.lambda) && nonNegative(msg.method.value.alpha)).toBe(true);
        } else if (msg.method.case === "repnoise") {
          expect(nonNegative(msg.method.value.alpha) && nonNegative(msg.method.value.beta)).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
    bothSides();
  });

  it("accept only fine-tuning guards within the bounds, naming the guard's field otherwise", () => {
    const alignmentDataset = optional(
      fc.oneof(
        fc.record({ source: fc.record({ case: fc.constant("uri" as const), value: mostly(fc.constant("store://datasets/refusals.jsonl"), fc.constant("")) }) }),
        fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: mostly(fc.constant("alignment"), fc.constant("")), size: optional(int32) }) }) }),
      ),
    );
    const guard = fc.oneof(
      fc.record({ case: fc.constant("lisa" as const), value: fc.record({ alignmentSteps: optional(int32), userSteps: optional(int32), rho: optional(double), alignmentDataset }) }),
      fc.record({ case: fc.constant("safetyMix" as const), value: fc.record({ fraction: optional(double), alignmentDataset }) }),
    );
    fc.assert(
      fc.property(guard, (g) => {
        const msg = create(FineTuneSpecSchema, { alignedCheckpoint: { uri: "store://checkpoints/x", digest: `sha256:${"0".repeat(64)}` }, dataset: { source: { case: "builtin", value: { name: "sst2-mix" } } }, guard: g });
        const err = verdict(() => checkFineTuneSpec(msg, BOUNDS));
        if (err) {
          const prefix = g.case === "lisa" ? "spec.lisa." : "spec.safety_mix.";
          for (const v of err.findDetails(BadRequestSchema)[0].fieldViolations) expect(v.field.startsWith(prefix), v.field).toBe(true);
          return;
        }
        if (msg.guard.case === "lisa") {
          const l = msg.guard.value;
          expect(inInt(l.alignmentSteps, 0, BOUNDS.maxSteps)).toBe(true);
          expect(inInt(l.userSteps, 1, BOUNDS.maxSteps)).toBe(true);
          if (l.rho !== undefined) expect(Number.isFinite(l.rho) && l.rho >= 0).toBe(true);
        } else if (msg.guard.case === "safetyMix" && msg.guard.value.fraction !== undefined) {
          expect(msg.guard.value.fraction >= 0 && msg.guard.value.fraction <= 1).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
    bothSides();
  });

  it("checks the moderation gate's fields whether it is enabled or not", () => {
    const spec = (enabled: boolean) =>
      create(FineTuneSpecSchema, {
        alignedCheckpoint: { uri: "store://checkpoints/x", digest: `sha256:${"0".repeat(64)}` },
        dataset: { source: { case: "builtin", value: { name: "sst2-mix" } } },
        moderationGate: { enabled, threshold: 5, maxFlaggedFraction: -1 },
      });
    for (const enabled of [true, false]) {
      const err = verdict(() => checkFineTuneSpec(spec(enabled), BOUNDS));
      expect(err?.findDetails(BadRequestSchema)[0].fieldViolations.map((v) => v.field)).toEqual(["spec.moderation_gate.max_flagged_fraction", "spec.moderation_gate.threshold"]);
    }
  });
});

describe("call validators", () => {
  const prompts = mostly(fc.array(fc.record({ instruction: shortText, input: shortText }), { minLength: 1, maxLength: 4 }), fc.array(fc.record({ instruction: text, input: text }), { maxLength: MAX_BATCH + 2 }));
  const decoding = fc.oneof(
    fc.constant({ case: undefined }),
    fc.constant({ case: "greedy" as const, value: {} }),
    fc.record({ temperature: optional(double), topP: optional(double), seed: fc.nat() }).map((value) => ({ case: "sampled" as const, value })),
  );

  it("Generate: accepted requests are within the bounds", () => {
    fc.assert(
      fc.property(mostly(goodRef, checkpointRef), prompts, mostly(fc.integer({ min: 1, max: 8 }), optional(int32)), decoding, (checkpoint, p, maxNewTokens, d) => {
        const req: GenerateRequest = create(GenerateRequestSchema, { checkpoint, prompts: p, maxNewTokens, decoding: d as never });
        if (verdict(() => checkGenerateRequest(req, BOUNDS))) return;
        expect(req.prompts.length).toBeGreaterThanOrEqual(1);
        expect(req.prompts.length).toBeLessThanOrEqual(MAX_BATCH);
        for (const x of req.prompts) expect(Math.max(x.instruction.length, x.input.length)).toBeLessThanOrEqual(MAX_CHARS);
        expect(inInt(req.maxNewTokens, 1, BOUNDS.maxNewTokens)).toBe(true);
        expect(req.prompts.length * (req.maxNewTokens ?? Math.min(DEFAULT_NEW_TOKENS, BOUNDS.maxNewTokens))).toBeLessThanOrEqual(BOUNDS.maxGeneratedTokens);
        if (req.decoding.case === "sampled") {
          const { temperature, topP } = req.decoding.value;
          if (temperature !== undefined) expect(Number.isFinite(temperature) && temperature > 0).toBe(true);
          if (topP !== undefined) expect(topP > 0 && topP <= 1).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
    bothSides();
  });

  it("Moderate: accepted requests are within the bounds", () => {
    const pairs = mostly(fc.array(fc.record({ prompt: shortText, answer: shortText }), { minLength: 1, maxLength: 4 }), fc.array(fc.record({ prompt: text, answer: text }), { maxLength: MAX_BATCH + 2 }));
    fc.assert(
      fc.property(checkpointRef, pairs, optional(double), (moderationModel, p, threshold) => {
        const req: ModerateRequest = create(ModerateRequestSchema, { moderationModel, pairs: p, threshold });
        if (verdict(() => checkModerateRequest(req, BOUNDS))) return;
        expect(req.pairs.length).toBeGreaterThanOrEqual(1);
        expect(req.pairs.length).toBeLessThanOrEqual(MAX_BATCH);
        for (const x of req.pairs) expect(Math.max(x.prompt.length, x.answer.length)).toBeLessThanOrEqual(MAX_CHARS);
        if (req.threshold !== undefined) expect(req.threshold >= 0 && req.threshold <= 1).toBe(true);
      }),
      { numRuns: 500 },
    );
    bothSides();
  });

  it("Embed: accepted requests are within the bounds", () => {
    const layers = mostly(fc.array(fc.nat(8), { maxLength: 4 }), fc.oneof(fc.array(int32, { maxLength: 8 }), fc.constant(Array.from({ length: MAX_EMBED_LAYERS + 1 }, () => 0))));
    const texts = mostly(fc.array(shortText, { minLength: 1, maxLength: 4 }), fc.array(text, { maxLength: MAX_EMBED_TEXTS + 2 }));
    fc.assert(
      fc.property(mostly(goodRef, checkpointRef), texts, layers, (checkpoint, t, l) => {
        const req: EmbedRequest = create(EmbedRequestSchema, { checkpoint, texts: t, layers: l });
        if (verdict(() => checkEmbedRequest(req, BOUNDS))) return;
        expect(req.texts.length).toBeGreaterThanOrEqual(1);
        expect(req.texts.length).toBeLessThanOrEqual(MAX_EMBED_TEXTS);
        for (const t of req.texts) expect(t.length).toBeLessThanOrEqual(MAX_CHARS);
        expect(req.layers.length).toBeLessThanOrEqual(MAX_EMBED_LAYERS);
        for (const x of req.layers) expect(x).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 300 },
    );
    bothSides();
  });

  it("page_size and page_token: accepted ones are within the bounds", () => {
    fc.assert(
      fc.property(int32, fc.oneof(fc.string({ unit: "binary" }), fc.stringMatching(/^[A-Za-z0-9_-]{1,600}$/)), (size, token) => {
        const v = new RequestValidator();
        checkPage(v, size, token);
        if (verdict(() => v.check())) return;
        expect(size >= 0 && size <= 1000).toBe(true);
        expect(token === "" || /^[A-Za-z0-9_-]{1,512}$/.test(token)).toBe(true);
      }),
      { numRuns: 1000 },
    );
    bothSides();
  });

  it("pages by key show every item once, newest first, whatever is added between pages", () => {
    const key = fc.integer({ min: 0, max: 1e6 }).map((n) => `${timeKey(n)} ${n}`);
    fc.assert(
      fc.property(fc.uniqueArray(key, { maxLength: 40 }), fc.integer({ min: 1, max: 7 }), fc.array(fc.uniqueArray(key, { maxLength: 3 }), { maxLength: 20 }), (first, size, added) => {
        const items = first.map((k) => ({ key: k, item: k }));
        const shown: string[] = [];
        let token = "";
        for (let i = 0; i < 100; i++) {
          const { page, nextKey } = pageByKey(items, size, token ? tokenKey(token, /^\d{15} \d+$/) : undefined);
          shown.push(...page);
          if (!nextKey) break;
          token = keyToken(nextKey);
          for (const k of added[i] ?? []) if (!items.some((x) => x.key === k)) items.push({ key: k, item: k });
        }
        // Every first item once, in descending order; added ones only where they fall after the pages shown.
        expect(new Set(shown).size).toBe(shown.length);
        for (const k of first) expect(shown).toContain(k);
        expect(shown).toEqual([...shown].sort().reverse());
      }),
      { numRuns: 500 },
    );
  });
});

describe("handlers, through the server", () => {
  let suite: TestSuite;
  beforeAll(async () => {
    suite = await startSuite();
    // Accepted requests then stay cheap: a few tokens of the tiny model.
    suite.deps.bounds = { maxPromptTokens: 64, maxNewTokens: 4, maxGeneratedTokens: 16, maxSteps: 1000, maxTrainingTokens: 100_000 };
  });
  afterAll(() => suite?.close());

  /** Success, or an error the client can act on: never INTERNAL or UNKNOWN. */
  const results = { ok: 0, refused: 0 };
  async function handled(call: () => Promise<unknown>) {
    try {
      await call();
      results.ok++;
    } catch (err) {
      results.refused++;
      const code = ConnectError.from(err).code;
      expect([Code.Internal, Code.Unknown], ConnectError.from(err).message).not.toContain(code);
    }
  }

  it("never answer INTERNAL or UNKNOWN to random requests, and the server stays SERVING", async () => {
    const t = createGrpcTransport({ baseUrl: suite.server.url });
    const score = createClient(ScoreService, t);
    const embed = createClient(EmbedService, t);
    const align = createClient(AlignService, t);
    const base = { uri: suite.base.uri, digest: suite.base.digest };
    const ref = fc.oneof(fc.constant(base), checkpointRef);
    const words = fc.array(fc.constantFrom("the", "cat", "harm", "ok", "a", "é", "\u0000", "🙂"), { maxLength: 30 }).map((w) => w.join(" "));
    const small = fc.oneof(words, fc.string({ unit: "binary", maxLength: 20 }));
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ kind: fc.constant("generate" as const), checkpoint: ref, prompts: fc.array(fc.record({ instruction: small, input: small }), { maxLength: 3 }), maxNewTokens: optional(fc.integer({ min: -1, max: 5 })) }),
          fc.record({ kind: fc.constant("moderate" as const), pairs: fc.array(fc.record({ prompt: small, answer: small }), { maxLength: 3 }), threshold: optional(double) }),
          fc.record({ kind: fc.constant("embed" as const), checkpoint: ref, texts: fc.array(small, { maxLength: 3 }), layers: fc.array(fc.integer({ min: -1, max: 3 }), { maxLength: 3 }) }),
          // A parent that does not exist: an accepted spec ends at NOT_FOUND, so no job trains.
          fc.record({ kind: fc.constant("create" as const), spec: fc.record({ training: optional(fc.record({ maxSteps: optional(int32), batchSize: optional(int32), learningRate: optional(double) })), lora: optional(fc.record({ rank: optional(int32) })) }) }),
          fc.record({ kind: fc.constant("list" as const), pageSize: int32, pageToken: fc.string({ unit: "binary" }) }),
        ),
        async (r) => {
          switch (r.kind) {
            case "generate":
              return handled(() => score.generate({ checkpoint: r.checkpoint, prompts: r.prompts, maxNewTokens: r.maxNewTokens }));
            case "moderate":
              return handled(() => score.moderate({ pairs: r.pairs, threshold: r.threshold }));
            case "embed":
              return handled(() => embed.embed({ checkpoint: r.checkpoint, texts: r.texts, layers: r.layers }));
            case "create":
              return handled(() =>
                align.createAlignJob({
                  spec: { ...r.spec, lora: r.spec.lora ? { ...r.spec.lora, targetModules: [] } : undefined, baseCheckpoint: { uri: "store://checkpoints/none", digest: `sha256:${"0".repeat(64)}` }, dataset: { source: { case: "builtin", value: { name: "alignment" } } }, method: { case: "sft", value: {} } },
                }),
              );
            case "list":
              return handled(() => align.listAlignJobs({ pageSize: r.pageSize, pageToken: r.pageToken }));
          }
        },
      ),
      { numRuns: 150 },
    );
    expect((await createClient(Health, t).check({ service: "" })).status).toBe(S.SERVING);
    // Both paths ran: calls that reached the model, and calls refused before it.
    expect(results.ok).toBeGreaterThan(5);
    expect(results.refused).toBeGreaterThan(5);
  });
});
