// The alignment defences (docs/defences.md) against their definitions: each loss and gradient
// against a direct computation of its formula or finite differences, the reductions to SFT and
// Vaccine, learning, exact resume and tensor hygiene.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { collate } from "../../services/runtime/data/collate.ts";
import type { Example } from "../../services/runtime/data/template.ts";
import { LINEAR_MODULES, LlamaModel } from "../../services/runtime/model/llama.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { LoraAdapter, loraWeightName } from "../../services/runtime/model/lora.ts";
import { stepFunction, type AlignmentMethod } from "../../services/runtime/pipeline/alignment-methods.ts";
import { trainAdapter, type AdapterTrainingSpec } from "../../services/runtime/pipeline/train-adapter.ts";
import { Rng } from "../../services/runtime/rng.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { BoosterStep } from "../../services/runtime/train/booster-step.ts";
import { HarmfulBatches } from "../../services/runtime/train/harmful-batches.ts";
import { disposeBatch, toTensors, Trainer, type TrainOptions } from "../../services/runtime/train/loop.ts";
import { ASCENT_FLOOR, boundedAscent, harmfulTerms, MMD_BANDWIDTHS, mmd2, noiseAt, realPositions, RepNoiseStep } from "../../services/runtime/train/repnoise-step.ts";
import { SftStep, type StepFunction, type StepInput, type TrainBatch } from "../../services/runtime/train/step.ts";
import { drawLayers, TVaccineStep } from "../../services/runtime/train/t-vaccine-step.ts";
import { VaccineStep } from "../../services/runtime/train/vaccine-step.ts";
import { tinyConfig } from "../helpers/tiny-model.ts";
import { tinyStore, type TinyStore } from "../helpers/tiny-store.ts";
import { EXAMPLES, HARMFUL_EXAMPLES, tinyTokenizer } from "../helpers/tiny-world.ts";

let store: TinyStore;
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  store = await tinyStore();
});
afterAll(() => store.cleanup());

const tokenizer = tinyTokenizer();
const HARMFUL = HARMFUL_EXAMPLES;
const options: TrainOptions = { learningRate: 1e-2, maxSteps: 4, batchSize: 3, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0.1, gradClip: 1, seed: 1 };

function setup(layers = 2, dropout = 0) {
  const config = tinyConfig({
    vocab_size: tokenizer.vocabSize,
    max_position_embeddings: 256,
    pad_token_id: tokenizer.padId,
    eos_token_id: tokenizer.eosId,
    bos_token_id: tokenizer.bosId,
    num_hidden_layers: layers,
  });
  const model = LlamaModel.init(config, 0, { initStd: 0.3 });
  const adapter = LoraAdapter.init(model.config, { r: 4, alpha: 8, dropout, targetModules: [...LINEAR_MODULES] }, 5);
  // Non-zero B so the adapter matters in the forward pass.
  for (const pair of adapter.pairs.values()) tf.tidy(() => pair.b.assign(tf.randomNormal(pair.b.shape, 0, 0.1, "float32", 9)));
  return { model, adapter };
}

const harmful = () => HarmfulBatches.of(HARMFUL, tokenizer, options);

function paramsOf(adapter: LoraAdapter): Map<string, tf.Variable> {
  const params = new Map<string, tf.Variable>();
  for (const [name, pair] of adapter.pairs) {
    params.set(loraWeightName(name, "A"), pair.a);
    params.set(loraWeightName(name, "B"), pair.b);
  }
  return params;
}

const batchOf = (examples: Example[]): TrainBatch => toTensors(collate(examples, tokenizer));

/** Alignment loss of the whole training set (one batch), no dropout. */
function alignmentLoss(model: LlamaModel, adapter: LoraAdapter): number {
  const batch = batchOf(EXAMPLES);
  const loss = tf.tidy(() => causalLmLoss(model.forward(batch.inputIds, batch.attentionMask, { lora: adapter }).logits, batch.labels).dataSync()[0]);
  disposeBatch(batch);
  return loss;
}

/** Runs `steps` steps of a fresh tiny setup; losses, final adapter weights, and the step function (not disposed). */
function train(stepFn: StepFunction, steps = 2, setupArgs: [number?, number?] = [], learningRate = options.learningRate) {
  const { model, adapter } = setup(...setupArgs);
  const before = alignmentLoss(model, adapter);
  const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options: { ...options, maxSteps: steps, learningRate }, stepFn });
  const losses: number[] = [];
  const tensors: number[] = [];
  while (!trainer.done) {
    losses.push(trainer.runStep().loss);
    tensors.push(tf.memory().numTensors);
  }
  const after = alignmentLoss(model, adapter);
  const weights = adapter.exportWeights();
  trainer.dispose();
  adapter.dispose();
  model.dispose();
  return { losses, weights, before, after, tensors };
}

function expectSameRun(a: ReturnType<typeof train>, b: ReturnType<typeof train>): void {
  expect(a.losses).toEqual(b.losses);
  for (const [name, t] of b.weights) expect(a.weights.get(name)!.data).toEqual(t.data);
}

/** A StepInput over one batch whose update only records what it was given. */
function captureInput(model: LlamaModel, adapter: LoraAdapter, batch: TrainBatch) {
  const seen: { loss?: number; grads?: Map<string, tf.Tensor> } = {};
  const input: StepInput = {
    model,
    lora: adapter,
    params: paramsOf(adapter),
    batch,
    step: 0,
    phase: (_, fn) => fn(),
    update: (loss, grads) => {
      seen.loss = loss;
      seen.grads = grads;
      return 0;
    },
  };
  return { input, seen };
}

/** Loss and gradients by parameter name, written out with tf.variableGrads (the test's own computation). */
function directGrads(params: Map<string, tf.Variable>, f: () => tf.Scalar): { value: number; grads: Map<string, Float32Array> } {
  const names = [...params.keys()];
  const { value, grads } = tf.variableGrads(f, names.map((n) => params.get(n)!));
  const out = new Map(names.map((n) => [n, grads[params.get(n)!.name].dataSync() as Float32Array]));
  const v = value.dataSync()[0];
  tf.dispose([value, ...Object.values(grads)]);
  return { value: v, grads: out };
}

function expectClose(actual: Map<string, tf.Tensor>, expected: Map<string, Float32Array>, rtol = 1e-4): void {
  let scale = 0;
  for (const e of expected.values()) for (const x of e) scale = Math.max(scale, Math.abs(x));
  expect(scale).toBeGreaterThan(0);
  for (const [name, e] of expected) {
    const a = actual.get(name)!.dataSync();
    for (let i = 0; i < e.length; i++) expect(Math.abs(a[i] - e[i])).toBeLessThanOrEqual(rtol * scale);
  }
}

describe("T-Vaccine", () => {
  it("with every layer drawn is the Vaccine step: same losses, same adapter (dropout on)", () => {
    const vaccine = train(new VaccineStep(0.7), 3, [2, 0.1]);
    const tVaccine = train(new TVaccineStep({ rho: 0.7, layers: 2, resampleEvery: 1, probeEvery: 1, seed: 1 }, harmful()), 3, [2, 0.1]);
    expectSameRun(tVaccine, vaccine);
  });

  it("sets p_l from the gradient norms at the attention outputs on a probe batch", () => {
    const { model, adapter } = setup(3);
    const stepFn = new TVaccineStep({ rho: 0.5, layers: 1, resampleEvery: 1, probeEvery: 10, seed: 1 }, harmful());
    const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options, stepFn });
    trainer.runStep();
    // Direct: d h / d delta_l on harmful batch 0, before the first update moved the weights.
    const fresh = setup(3);
    const probe = harmful().at(0);
    const norms = tf.tidy(() => {
      const zeros = [0, 1, 2].map(() => tf.zeros([probe.inputIds.shape[0], probe.inputIds.shape[1], fresh.model.config.hiddenSize]));
      const g = tf.grads((...d: tf.Tensor[]) => causalLmLoss(fresh.model.forward(probe.inputIds, probe.attentionMask, { lora: fresh.adapter, deltas: d }).logits, probe.labels))(zeros);
      return g.map((x) => Math.sqrt(x.square().sum().dataSync()[0]));
    });
    const total = norms.reduce((s, x) => s + x, 0);
    const p = stepFn.state.probabilities!;
    norms.forEach((n, l) => expect(p[l]).toBeCloseTo(n / total, 5));
    expect(p.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 5);
    disposeBatch(probe);
    for (const x of [trainer, adapter, model, fresh.adapter, fresh.model]) x.dispose();
  });

  it("perturbs only the drawn layers, within rho over them, trains only their LoRA weights, and redraws every J steps", () => {
    const { model, adapter } = setup(3);
    const stepFn = new TVaccineStep({ rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 3, seed: 4 }, harmful());
    const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options: { ...options, maxSteps: 6 }, stepFn });
    const drawn: number[][] = [];
    const probed: number[] = [];
    for (let s = 0; s < 6; s++) {
      const before = adapter.exportWeights();
      const m = trainer.runStep((name, fn) => {
        if (name === "probe") probed.push(s);
        return fn();
      });
      const layers = stepFn.state.layers!;
      drawn.push(layers);
      expect(layers).toHaveLength(1);
      expect(m.perturbationNorm).toBeCloseTo(0.5, 4);
      for (const [name, t] of adapter.exportWeights()) {
        const layer = Number(/layers\.(\d+)\./.exec(name)![1]);
        const changed = t.data.some((x, i) => x !== before.get(name)!.data[i]);
        expect(changed).toBe(layers.includes(layer));
      }
    }
    expect(probed).toEqual([0, 3]);
    for (const s of [1, 3, 5]) expect(drawn[s]).toEqual(drawn[s - 1]);
    for (const x of [trainer, adapter, model]) x.dispose();
  });

  it("draws distinct layers with the probe's probabilities", () => {
    const rng = new Rng(7);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[drawLayers([0.6, 0.3, 0.1, 0], 1, rng)[0]]++;
    expect(counts[3]).toBe(0);
    [0.6, 0.3, 0.1].forEach((p, l) => expect(Math.abs(counts[l] / 4000 - p)).toBeLessThan(0.03));
    for (let i = 0; i < 50; i++) {
      const two = drawLayers([0.6, 0.3, 0.1, 0], 2, rng);
      expect(new Set(two).size).toBe(2);
      expect(two).not.toContain(3);
    }
    // Zero weights are drawn only when nothing else is left; the cap keeps at most the depth.
    expect(drawLayers([0.6, 0.3, 0.1, 0], 9, rng)).toEqual([0, 1, 2, 3]);
  });

  it("rejects bad settings", () => {
    expect(() => new TVaccineStep({ rho: -1, layers: 1, resampleEvery: 1, probeEvery: 1, seed: 0 }, harmful())).toThrow(/rho/);
    expect(() => new TVaccineStep({ rho: 1, layers: 0, resampleEvery: 1, probeEvery: 1, seed: 0 }, harmful())).toThrow(/layers/);
    expect(() => new TVaccineStep({ rho: 1, layers: 1, resampleEvery: 1.5, probeEvery: 1, seed: 0 }, harmful())).toThrow(/resampleEvery/);
  });
});

describe("Booster", () => {
  it("updates with g_f + lambda * g_h(w) - lambda * g_h(w - alpha g_h / ||g_h||) and leaves w where it was", () => {
    const { model, adapter } = setup();
    const batch = batchOf(EXAMPLES.slice(0, 3));
    const { input, seen } = captureInput(model, adapter, batch);
    const before = adapter.exportWeights();
    const [lambda, alpha] = [2, 0.3];
    new BoosterStep({ lambda, alpha }, harmful()).run(input);
    for (const [name, t] of adapter.exportWeights()) expect(t.data).toEqual(before.get(name)!.data);

    const params = paramsOf(adapter);
    const hb = harmful().at(0);
    const lossOn = (b: TrainBatch) => () => causalLmLoss(model.forward(b.inputIds, b.attentionMask, { lora: adapter, training: true }).logits, b.labels);
    const f = directGrads(params, lossOn(batch));
    const h = directGrads(params, lossOn(hb));
    const norm = Math.sqrt([...h.grads.values()].reduce((s, g) => s + g.reduce((a, x) => a + x * x, 0), 0));
    for (const [name, p] of params) p.assign(tf.tidy(() => p.sub(tf.tensor(h.grads.get(name)!, p.shape).mul(alpha / norm))));
    const hShifted = directGrads(params, lossOn(hb));
    const expected = new Map([...f.grads].map(([name, g]) => [name, g.map((x, i) => x + lambda * h.grads.get(name)![i] - lambda * hShifted.grads.get(name)![i])]));
    expectClose(seen.grads!, expected);
    expect(seen.loss!).toBeCloseTo(f.value + lambda * (h.value - hShifted.value), 5);
    // The harmful loss is lower after the normalised harmful step: the term Booster attenuates.
    expect(hShifted.value).toBeLessThan(h.value);
    seen.grads!.forEach((g) => g.dispose());
    disposeBatch(batch);
    disposeBatch(hb);
    adapter.dispose();
    model.dispose();
  });

  it("with lambda = 0 is the SFT step: same losses, same adapter", () => {
    expectSameRun(train(new BoosterStep({ lambda: 0, alpha: 0.1 }, harmful()), 3), train(new SftStep(), 3));
  });

  it("rejects bad settings", () => {
    expect(() => new BoosterStep({ lambda: -1, alpha: 0.1 }, harmful())).toThrow(/lambda/);
    expect(() => new BoosterStep({ lambda: 1, alpha: Number.POSITIVE_INFINITY }, harmful())).toThrow(/alpha/);
  });
});

describe("RepNoise", () => {
  it("MMD^2 is the biased estimate with the sum of fixed Gaussian kernels", () => {
    const [n, m, d] = [5, 4, 5];
    const rng = new Rng(3);
    const x = Array.from({ length: n }, () => Array.from({ length: d }, () => rng.normal() * 2 + 0.5));
    const y = Array.from({ length: m }, () => Array.from({ length: d }, () => rng.normal()));
    const got = tf.tidy(() => mmd2(tf.tensor2d(x), tf.tensor2d(y)).dataSync()[0]);
    const k = (a: number[], b: number[]) => {
      const sq = a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0);
      return MMD_BANDWIDTHS.reduce((s, c) => s + Math.exp(-sq / (c * d)), 0);
    };
    const mean = (a: number[][], b: number[][]) => a.reduce((s, u) => s + b.reduce((t, v) => t + k(u, v), 0), 0) / (a.length * b.length);
    const expected = mean(x, x) + mean(y, y) - 2 * mean(x, y);
    expect(expected).toBeGreaterThan(0.01);
    expect(Math.abs(got - expected)).toBeLessThan(1e-4 * Math.abs(expected) + 1e-6);
  });

  it("MMD^2's gradient in closed form (mmd2's, and the data-parallel step's) is autodiff's of the formula", () => {
    const rng = new Rng(5);
    const x = Array.from({ length: 6 }, () => Array.from({ length: 4 }, () => rng.normal() * 2 + 0.5));
    // A repeated row, as every sequence's first position gives: relu clamps its distance.
    x[5] = [...x[1]];
    const y = Array.from({ length: 7 }, () => Array.from({ length: 4 }, () => rng.normal()));
    const [got, expected] = tf.tidy(() => {
      const [a, b] = [tf.tensor2d(x), tf.tensor2d(y)];
      // The formula with pairwise differences, differentiated by tfjs.
      const kernelMean = (p: tf.Tensor2D, q: tf.Tensor2D) => {
        const sq = p.expandDims(1).sub(q.expandDims(0)).square().sum(2);
        return tf.addN(MMD_BANDWIDTHS.map((c) => sq.div(-c * 4).exp())).mean();
      };
      const formula = (u: tf.Tensor) => kernelMean(u as tf.Tensor2D, u as tf.Tensor2D).add(kernelMean(b, b)).sub(kernelMean(u as tf.Tensor2D, b).mul(2));
      return [tf.grad((u: tf.Tensor) => mmd2(u as tf.Tensor2D, b))(a).dataSync() as Float32Array, tf.grad(formula)(a).dataSync() as Float32Array];
    });
    const scale = expected.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(scale).toBeGreaterThan(1e-3);
    got.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThan(1e-5 * scale));
  });

  it("MMD^2 keeps no (tokens)^2 matrix for the backward pass, so layers do not add up", () => {
    const [n, d, layers] = [200, 8, 4];
    const xs = Array.from({ length: layers }, (_, l) => tf.variable(tf.randomNormal([n, d], 0, 1, "float32", l)));
    const y = tf.randomNormal([n, d], 0, 1, "float32", 9) as tf.Tensor2D;
    const before = tf.memory().numBytes;
    let held = 0;
    const { value, grads } = tf.variableGrads(() => {
      const total = tf.addN(xs.map((x) => mmd2(x as tf.Tensor2D, y))) as tf.Scalar;
      held = tf.memory().numBytes - before;
      return total;
    }, xs);
    // Autodiff of the formula would hold about 48 n x n matrices a layer here (30 MB).
    expect(held).toBeLessThan(n * n * 4);
    expect(value.dataSync()[0]).toBeGreaterThan(0);
    for (const g of Object.values(grads)) expect(tf.tidy(() => g.abs().max().dataSync()[0])).toBeGreaterThan(0);
    tf.dispose([value, y, ...xs, ...Object.values(grads)]);
  });

  it("takes the hidden states of the unpadded positions of every layer", () => {
    const { model, adapter } = setup();
    const hb = harmful().at(0);
    const [b, t] = hb.inputIds.shape;
    const rows = realPositions(hb);
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.length).toBeLessThan(b * t); // the rows differ in length: there is padding to skip
    const noise = noiseAt(2, 0, 2, rows.length, model.config.hiddenSize);
    const got = tf.tidy(() => harmfulTerms(model, adapter, hb, noise, 1, 0).dataSync()[0]);
    const expected = tf.tidy(() => {
      const { layerOutputs } = model.forward(hb.inputIds, hb.attentionMask, { lora: adapter, training: true, returnLayerOutputs: true });
      const per = layerOutputs!.map((h, l) => {
        const flat = h.reshape([b * t, model.config.hiddenSize]).arraySync() as number[][];
        return mmd2(tf.tensor2d(rows.map((r) => flat[r])), noise[l]).dataSync()[0];
      });
      return (per[0] + per[1]) / 2;
    });
    expect(got).toBeCloseTo(expected, 5);
    tf.dispose(noise);
    disposeBatch(hb);
    adapter.dispose();
    model.dispose();
  });

  it("the ascent term is the mean of -log(1 - p + 1e-6) over the answer tokens", () => {
    const { model, adapter } = setup();
    const hb = harmful().at(0);
    const { logits, got } = tf.tidy(() => {
      const l = model.forward(hb.inputIds, hb.attentionMask, { lora: adapter }).logits;
      return { logits: l.arraySync(), got: boundedAscent(l, hb.labels).dataSync()[0] };
    });
    const labels = hb.labels.arraySync();
    let sum = 0;
    let count = 0;
    for (let i = 0; i < labels.length; i++) {
      for (let t = 1; t < labels[i].length; t++) {
        if (labels[i][t] === -100) continue;
        const row = logits[i][t - 1];
        const max = Math.max(...row);
        const z = row.reduce((s, v) => s + Math.exp(v - max), 0);
        const p = Math.exp(row[labels[i][t]] - max) / z;
        sum += -Math.log(1 - p + ASCENT_FLOOR);
        count++;
      }
    }
    expect(count).toBeGreaterThan(0);
    expect(got).toBeCloseTo(sum / count, 5);
    disposeBatch(hb);
    adapter.dispose();
    model.dispose();
  });

  it("the gradient of the harmful terms matches finite differences of alpha * MMD + beta * ascent", () => {
    const { model, adapter } = setup();
    const hb = harmful().at(0);
    const noise = noiseAt(1, 0, 2, realPositions(hb).length, model.config.hiddenSize);
    const params = paramsOf(adapter);
    const value = () => harmfulTerms(model, adapter, hb, noise, 1, 0.5);
    const { grads } = directGrads(params, value);
    const h = 1e-2;
    // Central differences along a unit direction u in weight space: the slope must be <g, u>.
    // Along g itself that is ||g||; along a random direction it is judged on the scale ||g||
    // (as the Vaccine test does), since float32 rounding of a sum over many kernel entries
    // swamps a small slope's own relative error.
    const slope = (dir: Map<string, Float32Array>) => {
      const norm = Math.sqrt([...dir.values()].reduce((s, r) => s + r.reduce((a, x) => a + x * x, 0), 0));
      const at = (sign: number) => {
        const saved = new Map([...params].map(([name, p]) => [name, p.clone()]));
        for (const [name, p] of params) p.assign(tf.tidy(() => p.add(tf.tensor(dir.get(name)!, p.shape).mul((sign * h) / norm))));
        const v = tf.tidy(() => value().dataSync()[0]);
        for (const [name, p] of params) p.assign(saved.get(name)!);
        saved.forEach((x) => x.dispose());
        return v;
      };
      const predicted = [...grads].reduce((s, [name, g]) => s + g.reduce((a, x, i) => a + x * dir.get(name)![i], 0), 0) / norm;
      return { predicted, measured: (at(1) - at(-1)) / (2 * h) };
    };
    const along = slope(grads);
    const G = along.predicted;
    expect(G).toBeGreaterThan(1e-2);
    expect(Math.abs(along.measured - G)).toBeLessThan(0.02 * G);
    const rng = new Rng(11);
    const random = slope(new Map([...params].map(([name, p]) => [name, Float32Array.from({ length: p.size }, () => rng.normal())])));
    expect(Math.abs(random.measured - random.predicted)).toBeLessThan(0.02 * G);
    tf.dispose(noise);
    disposeBatch(hb);
    adapter.dispose();
    model.dispose();
  });

  it("adds the harmful terms' gradient to the alignment loss's, and alpha = beta = 0 is the SFT step", () => {
    const { model, adapter } = setup();
    const batch = batchOf(EXAMPLES.slice(0, 3));
    const { input, seen } = captureInput(model, adapter, batch);
    new RepNoiseStep({ alpha: 1, beta: 0.5, seed: 1 }, harmful()).run(input);
    const params = paramsOf(adapter);
    const hb = harmful().at(0);
    const noise = noiseAt(1, 0, 2, realPositions(hb).length, model.config.hiddenSize);
    const f = directGrads(params, () => causalLmLoss(model.forward(batch.inputIds, batch.attentionMask, { lora: adapter, training: true }).logits, batch.labels));
    const r = directGrads(params, () => harmfulTerms(model, adapter, hb, noise, 1, 0.5));
    expectClose(seen.grads!, new Map([...f.grads].map(([name, g]) => [name, g.map((x, i) => x + r.grads.get(name)![i])])));
    expect(seen.loss!).toBeCloseTo(f.value + r.value, 5);
    seen.grads!.forEach((g) => g.dispose());
    tf.dispose(noise);
    disposeBatch(batch);
    disposeBatch(hb);
    adapter.dispose();
    model.dispose();
    expectSameRun(train(new RepNoiseStep({ alpha: 0, beta: 0, seed: 1 }, harmful()), 3), train(new SftStep(), 3));
  });
});

describe("every defence", () => {
  const methods: [string, () => StepFunction][] = [
    ["t_vaccine", () => new TVaccineStep({ rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 3, seed: 1 }, harmful())],
    ["booster", () => new BoosterStep({ lambda: 5, alpha: 0.1 }, harmful())],
    ["repnoise", () => new RepNoiseStep({ alpha: 1, beta: 0.001, seed: 1 }, harmful())],
  ];

  it.each(methods)("%s learns the alignment data and holds the tensor count flat across steps", (_, make) => {
    const run = train(make(), 8, [], 3e-2);
    expect(run.after).toBeLessThan(0.8 * run.before);
    expect(run.tensors.slice(2)).toEqual(run.tensors.slice(2).map(() => run.tensors[2]));
  });

  const resumable: [string, AlignmentMethod][] = [
    ["t_vaccine", { kind: "t_vaccine", rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 4 }],
    ["booster", { kind: "booster", lambda: 5, alpha: 0.1 }],
    ["repnoise", { kind: "repnoise", alpha: 1, beta: 0.001 }],
  ];

  it.each(resumable)("%s resumes mid-run to the same adapter as an uninterrupted run", async (_, method) => {
    const spec: AdapterTrainingSpec = {
      parent: store.base,
      data: EXAMPLES,
      harmful: HARMFUL,
      method,
      lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] },
      training: { ...options, learningRate: 3e-2, maxSteps: 6, seed: 3 },
      checkpointEvery: 100,
    };
    const straight = (await trainAdapter(store.store, spec))!;
    const abort = new AbortController();
    let state: CheckpointRef | undefined;
    const stopped = await trainAdapter(store.store, spec, {
      signal: abort.signal,
      onStep: (m) => m.step === 3 && abort.abort(),
      onCheckpoint: (ref, kind) => kind === "training-state" && (state = ref),
    });
    expect(stopped).toBeUndefined();
    const resumed = await trainAdapter(store.store, spec, { resumeFrom: state });
    expect(resumed).toEqual(straight);
  });

  it.each(methods)("%s writes its harmful-data cursor to the training state and refuses a state whose cursor disagrees with its step", (_, make) => {
    const stepFn = make();
    const state = stepFn.exportState!(7);
    expect(() => stepFn.importState!(state, 7)).not.toThrow();
    expect(() => stepFn.importState!(state, 8 * 3)).toThrow(/harmful.cursor/);
  });

  it("a method that reads harmful data refuses to run without it", () => {
    expect(() => stepFunction({ method: { kind: "booster", lambda: 5, alpha: 0.1 }, seed: 1 })).toThrow(/harmful dataset/);
    expect(() => HarmfulBatches.of([], tokenizer, options)).toThrow(/empty/);
  });
});
