// AdamW, clipping, the schedule and data order against hand computations.
import * as tf from "@tensorflow/tfjs";
import { describe, expect, it } from "vitest";
import { AdamW, clipByGlobalNorm } from "../../services/runtime/train/adamw.ts";
import { batchAt, epochOrder } from "../../services/runtime/train/batches.ts";
import { learningRateAt } from "../../services/runtime/train/schedule.ts";

describe("AdamW", () => {
  it("matches PyTorch's update rule computed by hand over three steps", () => {
    const p = tf.variable(tf.tensor1d([0.5, -1.0, 2.0]));
    const opt = new AdamW(new Map([["w", p]]), { weightDecay: 0.1 });
    const gradsPerStep = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.1, 0.2]];
    const lrs = [1e-2, 5e-3, 2e-3];
    // Hand computation in float64.
    let w = [0.5, -1.0, 2.0];
    let m = [0, 0, 0];
    let v = [0, 0, 0];
    gradsPerStep.forEach((g, k) => {
      const t = k + 1;
      const lr = lrs[k];
      w = w.map((x) => x * (1 - lr * 0.1));
      m = m.map((x, i) => 0.9 * x + 0.1 * g[i]);
      v = v.map((x, i) => 0.999 * x + 0.001 * g[i] * g[i]);
      const bc1 = 1 - 0.9 ** t;
      const bc2 = 1 - 0.999 ** t;
      w = w.map((x, i) => x - (lr / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + 1e-8)));
      const grad = tf.tensor1d(g);
      opt.apply(new Map([["w", grad]]), lr);
      grad.dispose();
    });
    const got = Array.from(p.dataSync());
    got.forEach((x, i) => expect(x).toBeCloseTo(w[i], 6));
    const state = opt.exportState();
    expect([...state.keys()]).toEqual(["w.exp_avg", "w.exp_avg_sq", "w.step"]);
    expect(state.get("w.step")).toEqual({ data: Float32Array.of(3), shape: [] });
    Array.from(state.get("w.exp_avg")!.data).forEach((x, i) => expect(x).toBeCloseTo(m[i], 7));
    opt.dispose();
    p.dispose();
  });

  it("counts steps per parameter, as PyTorch: one first updated at step 21 is bias-corrected as at its first step", () => {
    // T-Vaccine trains only the layers drawn: "b" is frozen (no gradient) for 20 steps.
    const [a, b] = [tf.variable(tf.tensor1d([0])), tf.variable(tf.tensor1d([0]))];
    const opt = new AdamW(new Map([["a", a], ["b", b]]), { weightDecay: 0 });
    const g = tf.tensor1d([1]);
    for (let k = 0; k < 20; k++) opt.apply(new Map([["a", g]]), 0.1);
    expect(b.dataSync()[0]).toBe(0);
    opt.apply(new Map([["a", g], ["b", g]]), 0.1);
    // First update with g = 1: m / bc1 = 1, sqrt(v / bc2) = 1, so a step of lr (minus eps).
    expect(b.dataSync()[0]).toBeCloseTo(-0.1, 6);
    const state = opt.exportState();
    expect([state.get("a.step")!.data[0], state.get("b.step")!.data[0]]).toEqual([21, 1]);

    // Resumed, the counts come back; a state written before they were kept gives each the training step.
    const [a2, b2] = [tf.variable(tf.tensor1d([0])), tf.variable(tf.tensor1d([0]))];
    const again = new AdamW(new Map([["a", a2], ["b", b2]]), { weightDecay: 0 });
    again.importState(state, 21);
    expect(again.exportState().get("b.step")!.data[0]).toBe(1);
    const old = new Map([...state].filter(([k]) => !k.endsWith(".step")));
    again.importState(old, 21);
    expect(again.exportState().get("b.step")!.data[0]).toBe(21);
    expect(() => again.importState(new Map([...state, ["b.step", { data: Float32Array.of(22), shape: [] }]]), 21)).toThrow(/b\.step is 22/);
    tf.dispose([a, b, g, a2, b2]);
    opt.dispose();
    again.dispose();
  });

  it("exempts parameters the decay predicate excludes", () => {
    const p = tf.variable(tf.tensor1d([1, 1]));
    const opt = new AdamW(new Map([["model.norm.weight", p]]), { weightDecay: 0.5, decays: (n) => !n.endsWith("norm.weight") });
    const g = tf.tensor1d([0, 0]);
    opt.apply(new Map([["model.norm.weight", g]]), 0.1);
    expect(Array.from(p.dataSync())).toEqual([1, 1]);
    tf.dispose([g, p]);
    opt.dispose();
  });
});

describe("clipByGlobalNorm", () => {
  it("scales by maxNorm / (norm + 1e-6) only when the norm is larger", () => {
    const grads = new Map<string, tf.Tensor>([["a", tf.tensor1d([3, 0])], ["b", tf.tensor1d([0, 4])]]);
    const norm = clipByGlobalNorm(grads, 1);
    expect(norm).toBeCloseTo(5, 6);
    const coef = 1 / (5 + 1e-6);
    expect(Array.from(grads.get("a")!.dataSync())[0]).toBeCloseTo(3 * coef, 6);
    expect(Array.from(grads.get("b")!.dataSync())[1]).toBeCloseTo(4 * coef, 6);
    const small = new Map<string, tf.Tensor>([["a", tf.tensor1d([0.3, 0.4])]]);
    const before = small.get("a");
    expect(clipByGlobalNorm(small, 1)).toBeCloseTo(0.5, 6);
    expect(small.get("a")).toBe(before);
    tf.dispose([...grads.values(), ...small.values()]);
  });
});

describe("schedule", () => {
  it("warms up linearly from 0, then decays along a half cosine to 0 (HF convention)", () => {
    // 100 steps, 10% warm-up: 10 warm-up steps.
    expect(learningRateAt(0, 100, 1e-3, 0.1)).toBe(0);
    expect(learningRateAt(5, 100, 1e-3, 0.1)).toBeCloseTo(5e-4, 12);
    expect(learningRateAt(10, 100, 1e-3, 0.1)).toBeCloseTo(1e-3, 12);
    expect(learningRateAt(55, 100, 1e-3, 0.1)).toBeCloseTo(5e-4, 12);
    expect(learningRateAt(100, 100, 1e-3, 0.1)).toBeCloseTo(0, 12);
    expect(learningRateAt(0, 100, 1e-3, 0)).toBe(1e-3);
  });
});

describe("data order", () => {
  it("visits every example once per epoch, reproducibly, with a short last batch", () => {
    const seen: number[] = [];
    for (let step = 0; step < 3; step++) seen.push(...batchAt(7, 3, 42, step).indices);
    expect(seen.sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(batchAt(7, 3, 42, 2).indices).toHaveLength(1);
    expect(batchAt(7, 3, 42, 3).epoch).toBe(1);
    expect(epochOrder(7, 42, 0)).toEqual(epochOrder(7, 42, 0));
    expect(epochOrder(50, 42, 0)).not.toEqual(epochOrder(50, 42, 1));
    expect(epochOrder(50, 42, 0)).not.toEqual(epochOrder(50, 43, 0));
  });
});

describe("AdamW memory", () => {
  it("keeps exactly two moment tensors per parameter, and frees them on dispose", () => {
    const p = tf.variable(tf.zeros([3]));
    const before = tf.memory().numTensors;
    const opt = new AdamW(new Map([["w", p]]), { weightDecay: 0 });
    expect(tf.memory().numTensors).toBe(before + 2);
    opt.dispose();
    expect(tf.memory().numTensors).toBe(before);
    p.dispose();
  });
});
