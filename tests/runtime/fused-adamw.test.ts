// The native fused AdamW update and clipping norm (native/blas/ adamw and sumSquares,
// services/runtime/native/adamw-kernel.ts): the same bits as the stock tfjs ops over several
// steps with clipping, decay and its exemption, and a parameter frozen for a step; the norm
// within rounding; native calls instead of the ops; no leaks; and a parameter whose buffer
// another tensor shares left to the stock ops. Skipped where the addon did not build (the
// stock path is what runs there, and train-optim tests it).
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { loadBlasAddon } from "../../services/runtime/native/blas-addon.ts";
import { configureNativeKernels } from "../../services/runtime/native/kernels.ts";
import { Rng } from "../../services/runtime/rng.ts";
import { AdamW, clipCoefficient } from "../../services/runtime/train/adamw.ts";

const built = "addon" in loadBlasAddon();

beforeAll(async () => {
  await selectBackend("wasm", () => {}, { nativeKernels: "auto" });
});
afterAll(() => {
  configureNativeKernels("auto");
});

/** Uniform values in [-scale, scale) from a seed. */
function random(shape: number[], seed: number, scale = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => ((rng.nextUint32() / 2 ** 32) * 2 - 1) * scale);
}

// LoRA-like matrices, an odd size, and a norm weight the decay exempts.
const SHAPES: Record<string, number[]> = { "l.lora_A": [8, 128], "l.lora_B": [128, 8], odd: [17, 3], "model.norm.weight": [33] };

/**
 * Steps of AdamW with clipping at 1 (the norm is ~20: every step clips); "odd" is frozen at
 * step 2. With `scales`, those clipping coefficients are applied instead of the run's own
 * (the native norm sums in double, the stock one in float32: the update is compared bit for
 * bit on the same coefficient, the norms within rounding).
 */
async function run(steps: number, scales?: number[]) {
  // In tidy: the initial tensors are freed, so each variable owns its buffer alone.
  const variables = tf.tidy(() => Object.values(SHAPES).map((shape, i) => tf.variable(tf.tensor(random(shape, i + 1), shape))));
  const params = new Map(Object.keys(SHAPES).map((name, i) => [name, variables[i]]));
  const opt = new AdamW(params, { weightDecay: 0.1, decays: (n) => !n.endsWith("norm.weight") });
  const norms: number[] = [];
  const applied: number[] = [];
  const kernels: number[] = [];
  for (let step = 0; step < steps; step++) {
    const grads = new Map<string, tf.Tensor>();
    for (const [name, shape] of Object.entries(SHAPES)) {
      if (!(name === "odd" && step === 2)) grads.set(name, tf.tensor(random(shape, 100 * step + shape.length + name.length, 3), shape));
    }
    const { norm, scale } = clipCoefficient(grads, 1);
    norms.push(norm);
    applied.push(scales?.[step] ?? scale);
    kernels.push((await tf.profile(() => opt.apply(grads, 1e-2 * (step + 1), applied[step]))).kernels.length);
    tf.dispose([...grads.values()]);
  }
  const weights = new Map([...params].map(([name, p]) => [name, p.dataSync() as Float32Array]));
  const state = new Map([...opt.exportState()].map(([name, t]) => [name, t.data]));
  opt.dispose();
  tf.dispose([...params.values()]);
  return { weights, state, norms, applied, kernels };
}

describe.skipIf(!built)(`native fused AdamW${built ? "" : " (SKIPPED: the addon did not build here)"}`, () => {
  it("gives the stock ops' weights and moments bit for bit over 4 steps with clipping, decay exemption and a frozen parameter; the clipping norm within rounding", async () => {
    configureNativeKernels("off");
    const stock = await run(4);
    expect(configureNativeKernels("auto").active).toBe(true);
    const fused = await run(4, stock.applied);
    expect(stock.kernels.every((n) => n > 0)).toBe(true);
    expect(fused.kernels).toEqual([0, 0, 0, 0]);
    expect(stock.norms.every((n) => n > 1)).toBe(true);
    fused.norms.forEach((n, i) => expect(Math.abs(n - stock.norms[i]) / stock.norms[i], `step ${i}`).toBeLessThan(1e-6));
    for (const [name, w] of stock.weights) expect(fused.weights.get(name), name).toEqual(w);
    expect([...fused.state.keys()]).toEqual([...stock.state.keys()]);
    for (const [name, m] of stock.state) expect(fused.state.get(name), name).toEqual(m);
  });

  it("replaces the update's and the clipping norm's wasm kernels with native calls, and leaks nothing over 100 steps", async () => {
    const p = tf.tidy(() => tf.variable(tf.tensor(random([8, 128], 1), [8, 128])));
    const opt = new AdamW(new Map([["w", p]]), { weightDecay: 0.1 });
    const g = tf.tensor(random([8, 128], 2), [8, 128]);
    const grads = new Map([["w", g]]);
    configureNativeKernels("off");
    expect((await tf.profile(() => opt.apply(grads, 1e-3, 0.5))).kernels.length).toBeGreaterThan(10);
    configureNativeKernels("auto");
    const before = p.dataSync().slice();
    expect((await tf.profile(() => opt.apply(grads, 1e-3, 0.5))).kernels).toEqual([]);
    expect(p.dataSync()).not.toEqual(before);
    // The clipping norm too: read from the heap, no kernel.
    expect((await tf.profile(() => clipCoefficient(grads, 1))).kernels).toEqual([]);
    const memory = tf.memory();
    for (let i = 0; i < 100; i++) opt.apply(grads, 1e-3, 0.5);
    expect(tf.memory().numTensors).toBe(memory.numTensors);
    expect(tf.memory().numBytes).toBe(memory.numBytes);
    opt.dispose();
    tf.dispose([p, g]);
  });

  it("leaves a buffer another tensor shares to the stock ops, so that tensor keeps its values", () => {
    const p = tf.tidy(() => tf.variable(tf.tensor(random([4, 5], 3), [4, 5])));
    const opt = new AdamW(new Map([["w", p]]), { weightDecay: 0 });
    const shared = p.clone(); // the copy-free Identity: the same wasm buffer
    const before = shared.dataSync().slice();
    const g = tf.ones([4, 5]);
    opt.apply(new Map([["w", g]]), 0.1);
    expect(shared.dataSync()).toEqual(before);
    expect(p.dataSync()).not.toEqual(before);
    opt.dispose();
    tf.dispose([p, g, shared]);
  });

  it("the addon refuses an operand outside the heap", () => {
    const loaded = loadBlasAddon();
    if (!("addon" in loaded)) return;
    const heap = new ArrayBuffer(64);
    expect(() => loaded.addon.adamw(heap, 0, 16, 32, 48, 4, 1, 1, 0.9, 0.999, 1e-8, 1, 1e-3)).not.toThrow();
    expect(() => loaded.addon.adamw(heap, 0, 16, 32, 52, 4, 1, 1, 0.9, 0.999, 1e-8, 1, 1e-3)).toThrow(/outside the heap/);
    new Float32Array(heap).set([1, 2, 3], 13);
    expect(loaded.addon.sumSquares(heap, 52, 3)).toBe(14);
    expect(() => loaded.addon.sumSquares(heap, 56, 3)).toThrow(/outside the heap/);
  });
});
