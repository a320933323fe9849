// The fine-tuning guards against their definitions (docs/defences.md#fine-tuning-guards):
// Lisa's proximal term and state schedule, its reductions and resumes; safety mixing's count,
// determinism and reduction.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { collate } from "../../services/runtime/data/collate.ts";
import { safetyMix, safetyMixCount } from "../../services/runtime/data/safety-mix.ts";
import type { Example } from "../../services/runtime/data/template.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { loadCheckpoint } from "../../services/runtime/pipeline/load.ts";
import { trainAdapter, type AdapterTrainingSpec } from "../../services/runtime/pipeline/train-adapter.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { LisaStep, lisaPositionAt, proximalTerm } from "../../services/runtime/train/lisa.ts";
import { Trainer, type StepMetrics } from "../../services/runtime/train/loop.ts";
import { SftStep } from "../../services/runtime/train/step.ts";
import { EXAMPLES, tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";
import { tinyStore, type TinyStore } from "../helpers/tiny-store.ts";

let t: TinyStore;
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  t = await tinyStore();
});
afterAll(() => t.cleanup());

const REFUSALS = EXAMPLES.filter((e) => e.output === "I cannot help with that.");
// Harmful requests answered instead of refused: what a harmful fine-tuning set teaches.
const HARMFUL: Example[] = REFUSALS.map((e, i) => ({ ...e, output: i % 2 ? "An apple is red." : "Milo is a good name." }));
const USER: Example[] = [...HARMFUL, ...EXAMPLES.filter((e) => !REFUSALS.includes(e))];

const spec = (o: Partial<AdapterTrainingSpec> = {}): AdapterTrainingSpec => ({
  parent: t.base,
  data: USER,
  method: { kind: "sft" },
  lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] },
  training: { learningRate: 3e-2, maxSteps: 8, batchSize: 2, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0.1, gradClip: 1, seed: 3 },
  checkpointEvery: 100,
  ...o,
});
const lisa = (alignmentSteps: number, userSteps: number, rho = 1) => ({ kind: "lisa" as const, alignmentSteps, userSteps, rho, alignmentData: REFUSALS });

/** The adapter weights of a checkpoint, by name, as plain arrays. */
async function adapterOf(ref: CheckpointRef): Promise<Record<string, number[]>> {
  const loaded = await loadCheckpoint(t.store, ref);
  const out = Object.fromEntries([...loaded.adapter!.exportWeights()].map(([n, h]) => [n, [...h.data]]));
  loaded.dispose();
  return out;
}

/** Mean answer loss of the fine-tuned model (parent merged + its adapter) on examples. */
async function lossOn(ref: CheckpointRef, examples: Example[]): Promise<number> {
  const loaded = await loadCheckpoint(t.store, ref);
  const b = collate(examples, loaded.tokenizer, { maxLength: 64 });
  const loss = tf.tidy(() => {
    const ids = tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32");
    const mask = tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32");
    const { logits } = loaded.model.forward(ids, mask, { lora: loaded.adapter });
    return causalLmLoss(logits, tf.tensor2d(b.labels, [b.batch, b.seqLen], "int32")).dataSync()[0];
  });
  loaded.dispose();
  return loss;
}

describe("Lisa", () => {
  it("the proximal term is rho/2 ||w - w_switch||^2 with gradient rho (w - w_switch)", () => {
    const params = new Map<string, tf.Variable>([
      ["a", tf.variable(tf.tensor2d([[0.5, -1], [2, 0.25]]))],
      ["b", tf.variable(tf.tensor1d([3, -0.5, 1]))],
    ]);
    const anchor = new Map<string, tf.Tensor>([
      ["a", tf.tensor2d([[0, 1], [1.5, 0.25]])],
      ["b", tf.tensor1d([1, 0.5, -1])],
    ]);
    const rho = 0.7;
    const { value, grads } = proximalTerm(params, anchor, rho);
    let sq = 0;
    for (const [n, w] of params) {
      const diff = [...w.dataSync()].map((x, i) => x - anchor.get(n)!.dataSync()[i]);
      sq += diff.reduce((s, d) => s + d * d, 0);
      [...grads.get(n)!.dataSync()].forEach((g, i) => expect(g).toBeCloseTo(rho * diff[i], 6));
    }
    expect(value).toBeCloseTo((rho / 2) * sq, 5);
    for (const x of [...params.values(), ...anchor.values(), ...grads.values()]) x.dispose();
  });

  it("places steps in cycles of K1 alignment then K2 user steps, with each data's cursor", () => {
    const o = { alignmentSteps: 2, userSteps: 3, rho: 1 };
    expect(Array.from({ length: 11 }, (_, s) => lisaPositionAt(s, o).state[0]).join("")).toBe("aauuuaauuua");
    expect(lisaPositionAt(7, o)).toEqual({ state: "user", stepsIntoState: 0, alignmentBatches: 4, userBatches: 3 });
    expect(lisaPositionAt(10, o)).toEqual({ state: "alignment", stepsIntoState: 0, alignmentBatches: 4, userBatches: 6 });
    // K1 = 0: every step is a user step, in the plain order.
    expect(lisaPositionAt(5, { ...o, alignmentSteps: 0 })).toEqual({ state: "user", stepsIntoState: 2, alignmentBatches: 0, userBatches: 5 });
  });

  it("switches state at the planned steps, trains each state on its own data, and resets the proximal term at each switch", () => {
    const tokenizer = tinyTokenizer();
    const model = tinyWorldModel(tokenizer);
    const lora = LoraAdapter.init(model.config, { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "v_proj"] }, 1);
    const step = new LisaStep(new SftStep(), { alignmentSteps: 2, userSteps: 3, rho: 5 }, { alignment: REFUSALS, user: USER });
    const options = { learningRate: 3e-2, maxSteps: 9, batchSize: 2, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0, gradClip: 1, seed: 1 };
    const trainer = new Trainer({ model, lora, data: USER, tokenizer, options, stepFn: step });
    const sources = Array.from({ length: 9 }, (_, s) => step.batchSource(s).data);
    const metrics: StepMetrics[] = [];
    while (!trainer.done) metrics.push(trainer.runStep());
    expect(metrics.map((m) => m.lisa!.state[0]).join("")).toBe("aauuuaauu");
    expect(sources.map((d) => (d === REFUSALS ? "a" : "u")).join("")).toBe("aauuuaauu");
    // w = w_switch at the first step of a state, apart after: the term restarts at every switch.
    const firsts = [0, 2, 5, 7];
    metrics.forEach((m, s) => (firsts.includes(s) ? expect(m.lisa!.proximal).toBe(0) : expect(m.lisa!.proximal).toBeGreaterThan(0)));
    // Epochs count the user data only: 5 user batches of ceil(6 / 2) = 3 per epoch.
    expect(metrics.at(-1)!.epoch).toBeCloseTo(5 / 3, 10);
    expect(metrics[1].epoch).toBe(0);
    trainer.dispose();
    lora.dispose();
    model.dispose();
  });

  it("refuses empty alignment data; made without its data sets (a data-parallel thread's), it chooses no batch", () => {
    const options = { alignmentSteps: 2, userSteps: 3, rho: 1 };
    expect(() => new LisaStep(new SftStep(), options, { alignment: [], user: USER })).toThrow(/alignment data is empty/);
    expect(() => new LisaStep(new SftStep(), options).batchSource(0)).toThrow(/without its data sets/);
  });

  it("keeps tf.memory().numTensors flat across steps and switches", () => {
    const tokenizer = tinyTokenizer();
    const model = tinyWorldModel(tokenizer);
    const lora = LoraAdapter.init(model.config, { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj"] }, 1);
    const step = new LisaStep(new SftStep(), { alignmentSteps: 1, userSteps: 2, rho: 1 }, { alignment: REFUSALS, user: USER });
    const options = { learningRate: 1e-2, maxSteps: 10, batchSize: 2, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0.1, gradClip: 1, seed: 1 };
    const trainer = new Trainer({ model, lora, data: USER, tokenizer, options, stepFn: step });
    trainer.runStep();
    trainer.runStep();
    const after = tf.memory().numTensors;
    while (!trainer.done) {
      trainer.runStep();
      expect(tf.memory().numTensors).toBe(after);
    }
    const state = trainer.exportState();
    step.importState(state.stepState, state.step);
    expect(tf.memory().numTensors).toBe(after);
    trainer.dispose();
    lora.dispose();
    model.dispose();
  });

  it("with K1 = 0 trains the same adapter as plain fine-tuning", async () => {
    const plain = (await trainAdapter(t.store, spec()))!;
    const k1zero = (await trainAdapter(t.store, spec({ guard: lisa(0, 3) })))!;
    expect(await adapterOf(k1zero)).toEqual(await adapterOf(plain));
    // ...and K1 > 0 does not.
    const guarded = (await trainAdapter(t.store, spec({ guard: lisa(1, 3) })))!;
    expect(await adapterOf(guarded)).not.toEqual(await adapterOf(plain));
  });

  it("resumed inside the alignment state or the user state, ends with the adapter of an uninterrupted run", async () => {
    const s = spec({ guard: lisa(2, 3, 2), checkpointEvery: 100 });
    const straight = (await trainAdapter(t.store, s))!;
    // Stop after step 1 (alignment state, 1 step in) and after step 4 (user state, 2 steps in).
    for (const stopAt of [1, 4]) {
      const abort = new AbortController();
      let state: CheckpointRef | undefined;
      await trainAdapter(t.store, s, { signal: abort.signal, onStep: (m) => m.step === stopAt && abort.abort(), onCheckpoint: (ref) => (state = ref) });
      expect((await t.store.readManifest(state!)).meta.step).toBe(stopAt);
      expect(await trainAdapter(t.store, s, { resumeFrom: state })).toEqual(straight);
      // Another Lisa schedule is another run: its state is refused.
      await expect(trainAdapter(t.store, spec({ guard: lisa(3, 3, 2) }), { resumeFrom: state })).rejects.toThrow(/another run/);
    }
  });
});

describe("safety mixing", () => {
  const pool = Array.from({ length: 40 }, (_, i) => `refusal ${i}`);
  const user = Array.from({ length: 25 }, (_, i) => `user ${i}`);

  it("adds round(fraction * n) pool examples after the user's, halves rounded up", () => {
    expect(safetyMixCount(25, 0.1)).toBe(3); // 2.5
    expect(safetyMixCount(100, 0.29)).toBe(29); // 28.999999999999996 as a product
    expect(safetyMixCount(7, 0.1)).toBe(1);
    const mixed = safetyMix(user, pool, 0.1, 4);
    expect(mixed).toHaveLength(28);
    expect(mixed.slice(0, 25)).toEqual(user);
    const added = mixed.slice(25);
    expect(added.every((x) => pool.includes(x))).toBe(true);
    expect(new Set(added).size).toBe(3);
  });

  it("draws the same examples for the same seed and others for another seed; a small pool repeats in its seeded order", () => {
    const draw = (seed: number) => safetyMix(user, pool, 0.4, seed).slice(25);
    expect(draw(4)).toEqual(draw(4));
    expect(draw(5)).not.toEqual(draw(4));
    const small = safetyMix(user, ["x", "y", "z"], 0.3, 1).slice(25);
    expect(small).toHaveLength(8);
    expect(small.slice(3, 6)).toEqual(small.slice(0, 3));
    expect(new Set(small.slice(0, 3)).size).toBe(3);
    expect(() => safetyMix(user, [], 0.1, 1)).toThrow(/empty/);
    expect(() => safetyMix(user, pool, 1.5, 1)).toThrow(RangeError);
  });

  it("with fraction 0 keeps the data and trains the same adapter as no mixing", async () => {
    expect(safetyMix(user, pool, 0, 4)).toEqual(user);
    const plain = (await trainAdapter(t.store, spec()))!;
    const zero = (await trainAdapter(t.store, spec({ guard: { kind: "safety_mix", fraction: 0, alignmentData: REFUSALS } })))!;
    expect(await adapterOf(zero)).toEqual(await adapterOf(plain));
    const mixed = (await trainAdapter(t.store, spec({ guard: { kind: "safety_mix", fraction: 0.5, alignmentData: REFUSALS } })))!;
    expect(await adapterOf(mixed)).not.toEqual(await adapterOf(plain));
    expect((await t.store.readManifest(mixed)).meta.guard).toEqual({ kind: "safety_mix", fraction: 0.5, alignmentExamples: REFUSALS.length });
  });
});

describe("both guards", () => {
  it("keeps the refusal behaviour: refusal loss after harmful fine-tuning is lower with either guard than without", async () => {
    // Measured: 5.85 without a guard, 3.52 with Lisa 2/2, 3.53 with safety mixing at fraction 1.
    const training = { ...spec().training, maxSteps: 12 };
    const plain = await lossOn((await trainAdapter(t.store, spec({ training })))!, REFUSALS);
    const withLisa = await lossOn((await trainAdapter(t.store, spec({ training, guard: lisa(2, 2, 1) })))!, REFUSALS);
    const mixed = await lossOn((await trainAdapter(t.store, spec({ training, guard: { kind: "safety_mix", fraction: 1, alignmentData: REFUSALS } })))!, REFUSALS);
    expect(withLisa).toBeLessThan(plain - 1);
    expect(mixed).toBeLessThan(plain - 1);
  });
});
