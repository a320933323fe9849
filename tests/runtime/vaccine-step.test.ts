// The Vaccine step against its definition (docs/method.md#the-vaccine-step).
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { collate } from "../../services/runtime/data/collate.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { Trainer, type TrainOptions } from "../../services/runtime/train/loop.ts";
import { SftStep, type StepInput, type TrainBatch } from "../../services/runtime/train/step.ts";
import { computePerturbation, fitTo, VaccineStep } from "../../services/runtime/train/vaccine-step.ts";
import { EXAMPLES, tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

beforeAll(async () => {
  await selectBackend("cpu", () => {});
});

const tokenizer = tinyTokenizer();
const options: TrainOptions = {
  learningRate: 1e-2,
  maxSteps: 4,
  batchSize: 3,
  maxSequenceLength: 64,
  warmupRatio: 0,
  weightDecay: 0.1,
  gradClip: 1,
  seed: 1,
};
const setup = (seed = 0) => {
  const model = tinyWorldModel(tokenizer, seed);
  const adapter = LoraAdapter.init(model.config, { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, 5);
  // Non-zero B so the adapter matters in the forward pass.
  for (const pair of adapter.pairs.values()) tf.tidy(() => pair.b.assign(tf.randomNormal(pair.b.shape, 0, 0.1, "float32", 9)));
  return { model, adapter };
};

function batchOf(n = 3): TrainBatch {
  const b = collate(EXAMPLES.slice(0, n), tokenizer);
  return {
    inputIds: tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32"),
    attentionMask: tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32"),
    labels: tf.tensor2d(b.labels, [b.batch, b.seqLen], "int32"),
    tokens: 0,
  };
}

function lossWith(model: LlamaModel, adapter: LoraAdapter, batch: TrainBatch, deltas?: tf.Tensor[]): number {
  return tf.tidy(() =>
    causalLmLoss(model.forward(batch.inputIds, batch.attentionMask, { lora: adapter, deltas }).logits, batch.labels).dataSync()[0],
  );
}

describe("Vaccine step", () => {
  it("rho = 0 gives exactly the SFT step: same losses, same adapter", () => {
    const run = (stepFn: SftStep | VaccineStep) => {
      const { model, adapter } = setup();
      const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options, stepFn });
      const losses = [trainer.runStep().loss, trainer.runStep().loss];
      const weights = adapter.exportWeights();
      trainer.dispose();
      adapter.dispose();
      model.dispose();
      return { losses, weights };
    };
    const sft = run(new SftStep());
    const vaccine = run(new VaccineStep(0));
    expect(vaccine.losses).toEqual(sft.losses);
    for (const [name, t] of sft.weights) expect(vaccine.weights.get(name)!.data).toEqual(t.data);
  });

  it("eps has global norm rho and is the normalised gradient of the loss w.r.t. the attention outputs", () => {
    const { model, adapter } = setup(1);
    const batch = batchOf();
    const input: StepInput = { model, lora: adapter, params: new Map(), batch, step: 0, phase: (_, fn) => fn(), update: () => 0 };
    const rho = 0.7;
    const eps = computePerturbation(input, rho);
    const norm = Math.sqrt(eps.reduce((s, e) => s + tf.tidy(() => e.square().sum().dataSync()[0]), 0));
    expect(Math.abs(norm - rho) / rho).toBeLessThan(1e-4);

    // Central differences of the loss along directions u in delta-space (all layers at once):
    // dL/du = <g, u>. Along u = eps/rho = g/G it must equal G (the largest slope), and along
    // a random direction r it must equal <eps, r> * G / rho. Float32 on cpu: h = 1e-2 keeps
    // rounding error (~1e-7 / h) far below the tolerance of 2%, while the O(h^2) curvature
    // term stays small at these activation scales.
    const h = 1e-2;
    const slope = (dir: tf.Tensor[]) => {
      const plus = lossWith(model, adapter, batch, dir.map((d) => d.mul(h)));
      const minus = lossWith(model, adapter, batch, dir.map((d) => d.mul(-h)));
      return (plus - minus) / (2 * h);
    };
    const unit = eps.map((e) => e.div(rho));
    const G = slope(unit);
    expect(G).toBeGreaterThan(0);
    const random = eps.map((e, i) => tf.randomNormal(e.shape, 0, 1, "float32", 100 + i));
    const rNorm = Math.sqrt(random.reduce((s, r) => s + r.square().sum().dataSync()[0], 0));
    const r = random.map((x) => x.div(rNorm));
    const predicted = (eps.reduce((s, e, i) => s + e.mul(r[i]).sum().dataSync()[0], 0) * G) / rho;
    const measured = slope(r);
    expect(Math.abs(measured - predicted)).toBeLessThan(0.02 * G);
    // The worst-case direction raises the loss (to first order by rho * G).
    expect(lossWith(model, adapter, batch, eps)).toBeGreaterThan(lossWith(model, adapter, batch));
    tf.dispose([...eps, ...unit, ...random, ...r, batch.inputIds, batch.attentionMask, batch.labels]);
    adapter.dispose();
    model.dispose();
  });

  it("runs pass 1 every step, or every tau steps when accelerated, and reports the applied norm", () => {
    for (const [tau, expected] of [[1, [0, 1, 2, 3, 4, 5]], [3, [0, 3]]] as const) {
      const { model, adapter } = setup();
      const stepFn = new VaccineStep(0.5, tau);
      const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options: { ...options, maxSteps: 6 }, stepFn });
      const perturbed: number[] = [];
      const norms: number[] = [];
      while (!trainer.done) {
        const step = trainer.step;
        const m = trainer.runStep((name, fn) => {
          if (name === "perturbation") perturbed.push(step);
          return fn();
        });
        norms.push(m.perturbationNorm);
        expect(m.perturbationMs).toBeGreaterThanOrEqual(0);
      }
      expect(perturbed).toEqual(expected);
      // Batches have equal shapes here only by chance; the fitted eps never exceeds rho.
      for (const n of norms) expect(n).toBeLessThanOrEqual(0.5 * (1 + 1e-4));
      expect(norms[0]).toBeCloseTo(0.5, 4);
      trainer.dispose();
      adapter.dispose();
      model.dispose();
    }
  });

  it("fits a kept perturbation to another batch's shape: cropped where it is smaller, zeros where it is larger", () => {
    const eps = tf.tensor3d(Float32Array.from({ length: 24 }, (_, i) => i + 1), [2, 3, 4]);
    const same = fitTo(eps, 2, 3);
    expect(same.arraySync()).toEqual(eps.arraySync());
    const rows = (eps.arraySync() as number[][][]).map((r) => r.map((p) => [...p]));
    const zeros = [0, 0, 0, 0];
    // One more row, one position fewer.
    expect(fitTo(eps, 3, 2).arraySync()).toEqual([rows[0].slice(0, 2), rows[1].slice(0, 2), [zeros, zeros]]);
    // One row fewer, two more positions.
    expect(fitTo(eps, 1, 5).arraySync()).toEqual([[...rows[0], zeros, zeros]]);
    tf.dispose([eps, same]);
  });

  it("rejects a negative or non-finite rho and a bad tau", () => {
    expect(() => new VaccineStep(-1)).toThrow(/rho/);
    expect(() => new VaccineStep(Number.NaN)).toThrow(/rho/);
    expect(() => new VaccineStep(1, 0)).toThrow(/refreshEvery/);
  });
});
