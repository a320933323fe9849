// rho relative to the model (VaccineMethod.rho_relative, docs/method.md#calibrating-rho):
// resolved once on the first batch, exactly the absolute run it stands for, kept on resume,
// recorded in the result.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { collate } from "../../services/runtime/data/collate.ts";
import { LoraAdapter, loraWeightName } from "../../services/runtime/model/lora.ts";
import { trainAdapter, type AdapterTrainingSpec } from "../../services/runtime/pipeline/train-adapter.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { batchAt } from "../../services/runtime/train/batches.ts";
import { Trainer, type TrainOptions } from "../../services/runtime/train/loop.ts";
import { VaccineStep, type Rho } from "../../services/runtime/train/vaccine-step.ts";
import { EXAMPLES, tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";
import { tinyStore, type TinyStore } from "../helpers/tiny-store.ts";

let t: TinyStore;
beforeAll(async () => {
  await selectBackend("cpu", () => {});
  t = await tinyStore();
});
afterAll(() => t.cleanup());

const tokenizer = tinyTokenizer();
const options: TrainOptions = { learningRate: 1e-2, maxSteps: 4, batchSize: 3, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0.1, gradClip: 1, seed: 1 };
const LORA = { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const };

function run(rho: Rho, steps: number) {
  const model = tinyWorldModel(tokenizer, 0);
  const adapter = LoraAdapter.init(model.config, { ...LORA, targetModules: [...LORA.targetModules] }, 5);
  // Non-zero B so that the norm is the adapted model's, not only the base's.
  for (const pair of adapter.pairs.values()) tf.tidy(() => pair.b.assign(tf.randomNormal(pair.b.shape, 0, 0.1, "float32", 9)));
  const stepFn = new VaccineStep(rho);
  const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options, stepFn });
  return {
    model, adapter, stepFn, trainer,
    steps: (n = steps) => Array.from({ length: n }, () => trainer.runStep().perturbationNorm),
    dispose: () => (trainer.dispose(), adapter.dispose(), model.dispose()),
  };
}

/** sqrt(sum over layers and real tokens of A_l^2), in float64, on the batch training starts with. */
function firstBatchNorm(r: ReturnType<typeof run>): number {
  const { indices } = batchAt(EXAMPLES.length, options.batchSize, options.seed, 0);
  const b = collate(indices.map((i) => EXAMPLES[i]), tokenizer, { maxLength: options.maxSequenceLength });
  const ids = tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32");
  const mask = tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32");
  const { attentionOutputs } = r.model.forward(ids, mask, { lora: r.adapter, returnAttentionOutputs: true });
  let sq = 0;
  for (const a of attentionOutputs!) {
    const rows = a.arraySync();
    rows.forEach((row, i) => row.forEach((v, j) => b.attentionMask[i * b.seqLen + j] && v.forEach((x) => (sq += x * x))));
  }
  // Padding must be there for the mask to matter: the batch has rows of different lengths.
  expect(b.attentionMask.some((m) => m === 0)).toBe(true);
  tf.dispose([ids, mask, ...attentionOutputs!]);
  return Math.sqrt(sq);
}

describe("relative rho", () => {
  it("is r times the attention-output norm of the first batch, measured once", () => {
    const r = run({ relative: 0.1 }, 3);
    const direct = firstBatchNorm(r);
    expect(r.stepFn.calibration).toBeUndefined();
    const norms = r.steps();
    const c = r.stepFn.calibration!;
    expect(c.attentionNorm / direct).toBeCloseTo(1, 5);
    expect(c).toEqual({ rhoRelative: 0.1, attentionNorm: c.attentionNorm, rho: 0.1 * c.attentionNorm });
    // Every step perturbs with that rho: the first batch's measure does not change as weights do.
    for (const n of norms) expect(n / c.rho).toBeCloseTo(1, 4);
    r.dispose();
  });

  it("trains exactly the adapter of the absolute rho it resolves to", () => {
    const relative = run({ relative: 0.2 }, 4);
    relative.steps();
    const rho = relative.stepFn.calibration!.rho;
    const absolute = run(rho, 4);
    absolute.steps();
    expect(absolute.adapter.exportWeights()).toEqual(relative.adapter.exportWeights());
    relative.dispose();
    absolute.dispose();
  });

  it("survives a resume: the saved norm is reused, not measured again on the resumed batch", () => {
    const straight = run({ relative: 0.2 }, 4);
    straight.steps();
    const first = run({ relative: 0.2 }, 2);
    first.steps();
    const state = first.trainer.exportState();
    const weights = first.adapter.exportWeights();
    const resumed = run({ relative: 0.2 }, 2);
    for (const [name, pair] of resumed.adapter.pairs) {
      pair.a.assign(tf.tensor(weights.get(loraWeightName(name, "A"))!.data, pair.a.shape));
      pair.b.assign(tf.tensor(weights.get(loraWeightName(name, "B"))!.data, pair.b.shape));
    }
    resumed.trainer.importState(state);
    expect(resumed.stepFn.calibration).toEqual(first.stepFn.calibration);
    resumed.steps();
    expect(resumed.stepFn.calibration).toEqual(straight.stepFn.calibration);
    expect(resumed.adapter.exportWeights()).toEqual(straight.adapter.exportWeights());
    // A state past step 0 without the norm cannot be resumed with a relative rho.
    const lost = run({ relative: 0.2 }, 1);
    lost.trainer.importState({ ...state, stepState: new Map() });
    expect(() => lost.steps()).toThrow(/no attention-output norm/);
    for (const r of [straight, first, resumed, lost]) r.dispose();
  });
});

describe("trainAdapter with a relative rho", () => {
  const spec = (o: Partial<AdapterTrainingSpec> = {}): AdapterTrainingSpec => ({
    parent: t.base,
    data: EXAMPLES,
    method: { kind: "vaccine", rho: { relative: 0.15 }, refreshEvery: 1 },
    lora: { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "v_proj", "o_proj"] },
    training: { ...options, maxSteps: 4 },
    checkpointEvery: 2,
    ...o,
  });

  it("records the norm and rho in the result's manifest and a log line, and keeps them across a resume", async () => {
    const logs: string[] = [];
    const straight = (await trainAdapter(t.store, spec(), { onLog: (m) => logs.push(m) }))!;
    const meta = (await t.store.readManifest(straight)).meta.vaccine as { rho_relative: number; attention_norm: number; rho: number };
    expect(meta.rho_relative).toBe(0.15);
    expect(meta.attention_norm).toBeGreaterThan(0);
    expect(meta.rho).toBe(0.15 * meta.attention_norm);
    // Logged once, before the line every run ends with (a data-parallel run logs its threads too).
    const rhoLines = logs.filter((l) => l.startsWith("rho_relative"));
    expect(rhoLines).toEqual([`rho_relative 0.15 x attention-output norm ${meta.attention_norm} of the first batch = rho ${meta.rho}`]);
    expect(logs.at(-1)).toMatch(/^loss of the last batch after the last update, without perturbation or dropout: [0-9.]+$/);
    expect(logs.indexOf(rhoLines[0])).toBeLessThan(logs.length - 1);

    const abort = new AbortController();
    let state: CheckpointRef | undefined;
    await trainAdapter(t.store, spec(), {
      signal: abort.signal,
      onStep: (m) => m.step === 3 && abort.abort(),
      onCheckpoint: (ref, kind) => kind === "training-state" && (state = ref),
    });
    // Resumed at step 3, whose batch is not the first: the same adapter (same bytes, same ref) and manifest.
    const resumed = await trainAdapter(t.store, spec(), { resumeFrom: state });
    expect(resumed).toEqual(straight);
    expect((await t.store.readManifest(resumed!)).meta.vaccine).toEqual(meta);
  });

  it("writes no vaccine record for an absolute rho", async () => {
    const ref = (await trainAdapter(t.store, spec({ method: { kind: "vaccine", rho: 0.5, refreshEvery: 1 }, training: { ...options, maxSteps: 1 } })))!;
    expect((await t.store.readManifest(ref)).meta.vaccine).toBeUndefined();
  });
});
