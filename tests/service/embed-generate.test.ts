// EmbedService and ScoreService.Generate against the runtime's forward pass, over a real server.
import * as tf from "@tensorflow/tfjs";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { FinishReason, ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { loadCheckpoint } from "../../services/runtime/pipeline/load.ts";
import { textIds } from "../../services/runtime/pipeline/hidden-states.ts";
import { writeAdapterFolder } from "../../services/runtime/pipeline/training-state.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { answer } from "../../services/runtime/pipeline/answers.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { putExamples } from "../helpers/tiny-store.ts";

let suite: TestSuite;
let embed: ReturnType<typeof createClient<typeof EmbedService>>;
let score: ReturnType<typeof createClient<typeof ScoreService>>;
let perturbed: { uri: string; digest: string };
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "I cannot help with that."];

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  const transport = createGrpcTransport({ baseUrl: suite.server.url });
  embed = createClient(EmbedService, transport);
  score = createClient(ScoreService, transport);
  // A candidate for drift: the base with a random (non-zero) adapter.
  const base = await loadCheckpoint(suite.deps.store, suite.base);
  const adapter = LoraAdapter.init(base.model.config, { r: 2, alpha: 4, dropout: 0, targetModules: ["o_proj", "v_proj"] }, 1);
  for (const p of adapter.pairs.values()) tf.tidy(() => p.b.assign(tf.randomNormal(p.b.shape, 0, 0.2, "float32", 3)));
  const dir = mkdtempSync(join(tmpdir(), "vaccine-adapter-"));
  await writeAdapterFolder(dir, adapter, suite.base);
  perturbed = await suite.deps.store.put(dir, { kind: "adapter", meta: { parent: suite.base } });
  rmSync(dir, { recursive: true, force: true });
  adapter.dispose();
  base.dispose();
});
afterAll(() => suite.close());

describe("Embed", () => {
  it("returns the forward pass's attention outputs and final hidden state, unchanged by batching and padding", async () => {
    const res = await embed.embed({ checkpoint: suite.base, texts: TEXTS, layers: [1, 0], includeFinalHidden: true, pooling: Pooling.NONE });
    expect(res.hiddenSize).toBe(16);
    const loaded = await loadCheckpoint(suite.deps.store, suite.base);
    for (const [i, text] of TEXTS.entries()) {
      // The text alone, straight from the model: no padding, no batch.
      const ids = textIds(loaded, text);
      const out = loaded.model.forward(tf.tensor2d([ids], [1, ids.length], "int32"), tf.ones([1, ids.length]) as tf.Tensor2D, { returnAttentionOutputs: true, returnHidden: true });
      const e = res.embeddings[i];
      expect(e.tokenCount).toBe(ids.length);
      expect(e.layers.map((l) => l.layer)).toEqual([1, 0, -1]);
      const expected = [out.attentionOutputs![1], out.attentionOutputs![0], out.hidden!].map((t) => Array.from(t.dataSync()));
      e.layers.forEach((l, k) => {
        expect(l.vectors).toMatchObject({ rows: ids.length, cols: 16 });
        l.vectors!.values.forEach((x, j) => expect(x).toBeCloseTo(expected[k][j], 4));
      });
    }
    // Mean and last-token pooling are those rows' mean and last row.
    const mean = await embed.embed({ checkpoint: suite.base, texts: TEXTS, layers: [0], pooling: Pooling.MEAN });
    const last = await embed.embed({ checkpoint: suite.base, texts: TEXTS, layers: [0], pooling: Pooling.LAST_TOKEN });
    const full = res.embeddings[1].layers[1].vectors!;
    const col = (j: number) => Array.from({ length: full.rows }, (_, r) => full.values[r * 16 + j]);
    expect(mean.embeddings[1].layers[0].vectors!.values[3]).toBeCloseTo(col(3).reduce((a, b) => a + b) / full.rows, 5);
    expect(last.embeddings[1].layers[0].vectors!.values[5]).toBeCloseTo(col(5)[full.rows - 1], 6);
    loaded.dispose();
  });

  it("is the same for a text alone and in a batch, and empty layers means every layer", async () => {
    const alone = await embed.embed({ checkpoint: suite.base, texts: [TEXTS[1]], pooling: Pooling.MEAN });
    const batched = await embed.embed({ checkpoint: suite.base, texts: TEXTS, pooling: Pooling.MEAN });
    expect(alone.embeddings[0].layers.map((l) => l.layer)).toEqual([0, 1]);
    alone.embeddings[0].layers.forEach((l, k) =>
      l.vectors!.values.forEach((x, j) => expect(x).toBeCloseTo(batched.embeddings[1].layers[k].vectors!.values[j], 5)),
    );
  });

  it("stops its forward passes once its caller cancels, instead of finishing the batch", async () => {
    const texts = Array.from({ length: 200 }, (_, i) => `${"Tell me how to bake bread at home, step by step. ".repeat(6)}${i}`);
    const states = LlamaModel.prototype.states;
    let passes = 0;
    let cancelAt = Infinity;
    const cancel = new AbortController();
    LlamaModel.prototype.states = function (this: LlamaModel, ...args: Parameters<LlamaModel["states"]>) {
      if (++passes === cancelAt) cancel.abort();
      return states.apply(this, args);
    };
    try {
      const t0 = Date.now();
      await embed.embed({ checkpoint: suite.base, texts, pooling: Pooling.MEAN });
      const took = Date.now() - t0;
      const whole = passes;
      expect(whole).toBeGreaterThan(4);
      passes = 0;
      cancelAt = 1;
      await expect(embed.embed({ checkpoint: suite.base, texts, pooling: Pooling.MEAN }, { signal: cancel.signal })).rejects.toMatchObject({ code: Code.Canceled });
      // Longer than the whole batch took: what the server would still have computed, it has.
      await new Promise((r) => setTimeout(r, 2 * took));
      expect(passes).toBeLessThan(whole / 2);
    } finally {
      LlamaModel.prototype.states = states;
    }
  });

  it("answers INVALID_ARGUMENT for a layer the model lacks and NOT_FOUND for an unknown checkpoint", async () => {
    const layer = await rpcFailure(() => embed.embed({ checkpoint: suite.base, texts: ["x"], layers: [7] }));
    expect(layer.code).toBe(Code.InvalidArgument);
    expect(layer.message).toContain("layers[0]");
    // Every bad text and layer in one answer, not the first one found.
    const long = "a ".repeat(400);
    const all = await rpcFailure(() => embed.embed({ checkpoint: suite.base, texts: [long, "x", long], layers: [0, 7] }));
    expect(all.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["layers[1]", "texts[0]", "texts[2]"]);
    const missing = await rpcFailure(() => embed.embed({ checkpoint: { uri: `store://checkpoints/${"1".repeat(64)}`, digest: `sha256:${"1".repeat(64)}` }, texts: ["x"] }));
    expect(missing.code).toBe(Code.NotFound);
    expect(missing.info?.metadata.field).toBe("checkpoint");
    const classifier = await rpcFailure(() => embed.embed({ checkpoint: suite.deps.builtins.moderation, texts: ["x"] }));
    expect(classifier).toMatchObject({ code: Code.FailedPrecondition, info: { reason: "CHECKPOINT_KIND_INVALID", metadata: { field: "checkpoint" } } });
    const drift = await rpcFailure(() => embed.computeDrift({ reference: suite.base, candidate: suite.deps.builtins.moderation }));
    expect(drift).toMatchObject({ code: Code.FailedPrecondition, info: { reason: "CHECKPOINT_KIND_INVALID", metadata: { field: "candidate" } } });
  });
});

describe("ComputeDrift", () => {
  const probe = async () => {
    await putExamples(suite.deps.store, "store://datasets/probe.jsonl");
    return { source: { case: "uri" as const, value: "store://datasets/probe.jsonl" } };
  };

  it("refuses two checkpoints of different shapes as CHECKPOINTS_INCOMPARABLE, naming the config field", async () => {
    const other = await suite.deps.store.put(join(import.meta.dirname, "../fixtures/llama-f32-gqa"), { kind: "model", meta: { name: "other shape" } });
    const e = await rpcFailure(async () => embed.computeDrift({ reference: suite.base, candidate: other, probeDataset: await probe() }));
    expect(e).toMatchObject({ code: Code.FailedPrecondition, info: { reason: "CHECKPOINTS_INCOMPARABLE" } });
    expect(e.message).toMatch(/^the checkpoints differ in vocab_size: \d+ \(reference\) and 512 \(candidate\)$/);
  });

  it("takes turns with the other long calls, and serves other calls between its batches", async () => {
    const slots = suite.deps.inferenceSlots!;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const holds = Array.from({ length: slots.limit }, () => slots.run(() => held));
    const waiting = embed.computeDrift({ reference: suite.base, candidate: perturbed, probeDataset: await probe() });
    for (const end = Date.now() + 5000; slots.queued === 0 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 10));
    expect(slots.queued).toBe(1);
    release();
    await Promise.all(holds);
    expect((await waiting).probeSize).toBe(EXAMPLES.length);
    // A large probe: an Embed sent while it runs is answered before it ends.
    const done: string[] = [];
    const large = embed.computeDrift({ reference: suite.base, candidate: perturbed, probeDataset: { source: { case: "builtin", value: { name: "alignment", size: 2000 } } }, probeSize: 2000 }).then(() => done.push("drift"));
    await new Promise((r) => setTimeout(r, 100));
    await embed.embed({ checkpoint: suite.base, texts: ["Name a red fruit."] }).then(() => done.push("embed"));
    await large;
    expect(done).toEqual(["embed", "drift"]);
  });

  it("is exactly 0 for a checkpoint against itself", async () => {
    const res = await embed.computeDrift({ reference: suite.base, candidate: suite.base, probeDataset: await probe() });
    expect(res.totalSquaredNorm).toBe(0);
    expect(res.totalL2Norm).toBe(0);
    expect(res.probeSize).toBe(EXAMPLES.length);
    expect(res.definition).toContain("real tokens");
  });

  it("matches a direct computation against a perturbed copy, and per-layer values sum to the totals", async () => {
    const res = await embed.computeDrift({ reference: suite.base, candidate: perturbed, probeDataset: await probe(), probeSize: 4 });
    const a = await loadCheckpoint(suite.deps.store, suite.base);
    const b = await loadCheckpoint(suite.deps.store, perturbed);
    // Directly: example by example, no batching, no padding.
    const expected = [0, 0];
    let tokens = 0;
    for (const e of EXAMPLES.slice(0, 4)) {
      const ids = [...textIds(a, ""), ...a.tokenizer.encode(formatPrompt(e)), ...a.tokenizer.encode(e.output)];
      tokens += ids.length;
      const x = tf.tensor2d([ids], [1, ids.length], "int32");
      const m = tf.ones([1, ids.length]) as tf.Tensor2D;
      const ra = a.model.forward(x, m, { returnAttentionOutputs: true }).attentionOutputs!;
      const rb = b.model.forward(x, m, { lora: b.adapter, returnAttentionOutputs: true }).attentionOutputs!;
      ra.forEach((t, l) => (expected[l] += t.sub(rb[l]).square().sum().dataSync()[0]));
    }
    expect(res.tokenCount).toBe(tokens);
    res.layers.forEach((l, i) => {
      // float32 sums in another order: equal to 1e-5 relative.
      expect(Math.abs(l.squaredNorm - expected[i]) / expected[i]).toBeLessThan(1e-5);
      expect(Math.abs(l.l2Norm - Math.sqrt(expected[i])) / Math.sqrt(expected[i])).toBeLessThan(1e-5);
    });
    expect(res.totalSquaredNorm).toBeCloseTo(res.layers.reduce((s, l) => s + l.squaredNorm, 0), 6);
    expect(res.totalL2Norm).toBeCloseTo(res.layers.reduce((s, l) => s + l.l2Norm, 0), 6);
    expect(res.totalSquaredNorm).toBeGreaterThan(0);
    a.dispose();
    b.dispose();
  });
});

describe("Generate", () => {
  it("greedy is deterministic, stops at the limit or eos, and equals the runtime's answer", async () => {
    const req = { checkpoint: suite.base, prompts: [{ instruction: "Name a red fruit." }, { instruction: "Tell me how to steal a bike." }], maxNewTokens: 6 };
    const a = await score.generate(req);
    const b = await score.generate(req);
    expect(a.generations.map((g) => g.text)).toEqual(b.generations.map((g) => g.text));
    for (const g of a.generations) {
      expect(g.tokenCount).toBeLessThanOrEqual(6);
      expect(g.finishReason).toBe(g.tokenCount === 6 ? FinishReason.LENGTH : FinishReason.EOS);
    }
    const loaded = await loadCheckpoint(suite.deps.store, suite.base);
    expect(a.generations.map((g) => g.text)).toEqual(answer(loaded, req.prompts, { maxNewTokens: 6 }).map((x) => x.text));
    loaded.dispose();
  });

  it("stops decoding at the caller's deadline instead of finishing the batch", { timeout: 60_000 }, async () => {
    const prompts = Array.from({ length: 256 }, (_, i) => ({ instruction: `Tell me a story number ${i}.` }));
    const t0 = Date.now();
    const e = await rpcFailure(() => score.generate({ checkpoint: suite.base, prompts, maxNewTokens: 128 }, { timeoutMs: 200 }));
    expect(e.code).toBe(Code.DeadlineExceeded);
    // The whole batch takes tens of seconds here; stopping between tokens ends it at once.
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("sampling with a seed is reproducible", async () => {
    const req = (seed: number) => ({ checkpoint: suite.base, prompts: [{ instruction: "Name a red fruit." }], maxNewTokens: 8, decoding: { case: "sampled" as const, value: { temperature: 1.5, seed } } });
    const texts = async (seed: number) => (await score.generate(req(seed))).generations[0].text;
    expect(await texts(4)).toBe(await texts(4));
    const others = await Promise.all([5, 6, 7, 8].map(texts));
    expect(others.some((t) => t !== (others[0]))).toBe(true);
  });
});
