// The fused native kernels (loss, RMSNorm, SwiGLU, LoRA projection, attention, the decoder blocks): the same values and gradients as the tfjs
// ops they replace (run with the native kernels off), on odd sizes, ignored rows and large
// logits; bad targets refused; nothing leaked. Skipped where the addon did not build.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import type { LlamaConfig } from "../../services/runtime/model/config.ts";
import { LINEAR_MODULES, rmsNorm, swiglu, type ForwardOptions, type LinearModule } from "../../services/runtime/model/llama.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { causalLmHeadLoss, causalLmLoss, IGNORE_INDEX } from "../../services/runtime/model/loss.ts";
import { loadBlasAddon } from "../../services/runtime/native/blas-addon.ts";
import { headLossKernel, softmaxCrossEntropy } from "../../services/runtime/native/cross-entropy-kernel.ts";
import { configureNativeKernels, nativeKernelsActive } from "../../services/runtime/native/kernels.ts";
import { Rng } from "../../services/runtime/rng.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";
import { compareScaled, type NestedNumbers } from "../helpers/tolerance.ts";

const loaded = loadBlasAddon();
const built = "addon" in loaded;

beforeAll(async () => {
  await selectBackend("wasm", () => {}, { nativeKernels: "auto" });
});
afterAll(() => {
  configureNativeKernels("auto");
});

/** Uniform values in [-scale, scale) from a seed. */
function random(shape: number[], seed: number, scale = 1): tf.Tensor {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => ((rng.nextUint32() / 2 ** 32) * 2 - 1) * scale), shape);
}

/** f's value and its gradients with respect to xs (against a fixed random cotangent), as plain arrays. */
function valueAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], seed: number): NestedNumbers[] {
  return tf.tidy(() => {
    const y = f(...xs);
    const dy = y.rank === 0 ? tf.scalar(1.7) : random(y.shape, seed);
    const { value, grads } = tf.valueAndGrads((...inputs: tf.Tensor[]) => f(...inputs).mul(dy).sum() as tf.Scalar)(xs);
    return [y.arraySync() as NestedNumbers, value.arraySync() as NestedNumbers, ...grads.map((g) => g.arraySync() as NestedNumbers)];
  });
}

/** The same computation with the stock tfjs ops (native off) and with the fused kernel (native on). */
function stockAndFused(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], seed: number) {
  configureNativeKernels("off");
  expect(nativeKernelsActive()).toBe(false);
  const stock = valueAndGrads(f, xs, seed);
  configureNativeKernels("auto");
  expect(nativeKernelsActive()).toBe(true);
  const fused = valueAndGrads(f, xs, seed);
  return { stock, fused };
}

function expectClose(fused: NestedNumbers[], stock: NestedNumbers[], rtol: number, where: string) {
  expect(fused).toHaveLength(stock.length);
  fused.forEach((v, i) => {
    const cmp = compareScaled(v, stock[i], rtol);
    expect(cmp.failures, `${where}, output ${i}: ${JSON.stringify(cmp.worst)}`).toBe(0);
  });
}

describe.skipIf(!built)(`fused native kernels equal the tfjs ops they replace${built ? "" : " (SKIPPED: the addon did not build here)"}`, () => {
  it("the loss: value and logits gradient, with ignored labels, odd vocabularies and large logits", () => {
    const cases: [number, number, number, number][] = [
      [2, 5, 3, 1], // batch, tokens, vocab, logit scale
      [3, 9, 17, 10],
      [2, 33, 129, 1e4], // would overflow exp without the max shift
    ];
    let seed = 0;
    for (const [b, t, vocab, scale] of cases) {
      const rng = new Rng(++seed);
      const labels = tf.tensor2d(
        Int32Array.from({ length: b * t }, (_, i) => (i % 4 === 1 ? IGNORE_INDEX : rng.nextUint32() % vocab)),
        [b, t],
        "int32",
      );
      const logits = random([b, t, vocab], ++seed, scale);
      const { stock, fused } = stockAndFused((x) => causalLmLoss(x as tf.Tensor3D, labels), [logits], seed);
      expectClose(fused, stock, 1e-5, `[${b}, ${t}, ${vocab}] scale ${scale}`);
      // Rows whose label is ignored (every 4th from 1) and each row's last position get no gradient.
      const grad = fused[2] as number[][][];
      expect(grad[0][0].every((g) => g === 0)).toBe(true); // position 0 predicts label 1: ignored
      expect(grad[0][t - 1].every((g) => g === 0)).toBe(true);
      expect(grad[0][1].some((g) => g !== 0)).toBe(true);
      tf.dispose([labels, logits]);
    }
  });

  it("the head with the loss: value and the hidden states' gradient, with ignored labels, over one or several blocks of rows", () => {
    // [batch, tokens, width, vocab]: one block; three of 64 rows (the last part-filled); 16-row blocks of a 5,000 vocabulary.
    const cases: [number, number, number, number][] = [[2, 5, 3, 17], [3, 50, 16, 2048], [2, 21, 8, 5000]];
    let seed = 500;
    for (const [b, t, width, vocab] of cases) {
      const rng = new Rng(++seed);
      const labels = tf.tensor2d(Int32Array.from({ length: b * t }, (_, i) => (i % 5 === 2 ? IGNORE_INDEX : rng.nextUint32() % vocab)), [b, t], "int32");
      const hidden = random([b, t, width], ++seed, 2);
      const head = random([vocab, width], ++seed) as tf.Tensor2D;
      const { stock, fused } = stockAndFused((h) => causalLmHeadLoss(h as tf.Tensor3D, head, labels), [hidden], seed);
      expectClose(fused, stock, 1e-5, `[${b}, ${t}, ${width}] vocab ${vocab}`);
      tf.dispose([labels, hidden, head]);
    }
    // As a batch is labelled: a prompt, a response, padding. Only the response's rows are
    // multiplied, gathered 16 to a block (vocab 70,000), runs of them crossing blocks.
    const [b, t, width, vocab] = [3, 40, 4, 70_000];
    const rng = new Rng(600);
    const labels = tf.tensor2d(Int32Array.from({ length: b * t }, (_, k) => {
      const [row, pos] = [Math.floor(k / t), k % t];
      return pos > 6 + row && pos <= 26 + 4 * row ? rng.nextUint32() % vocab : IGNORE_INDEX;
    }), [b, t], "int32");
    const hidden = random([b, t, width], 601, 2);
    const head = random([vocab, width], 602) as tf.Tensor2D;
    const { stock, fused } = stockAndFused((h) => causalLmHeadLoss(h as tf.Tensor3D, head, labels), [hidden], 603);
    expectClose(fused, stock, 1e-5, `runs of labels [${b}, ${t}, ${width}] vocab ${vocab}`);
    // Position j predicts label j + 1: row 0's gradient is zero before 6 and from 26 on.
    const grad = (fused[2] as number[][][])[0];
    grad.forEach((g, j) => expect(g.some((v) => v !== 0), `position ${j}`).toBe(j >= 6 && j < 26));
    tf.dispose([labels, hidden, head]);
    // A bad target (past the labels' own check) is refused by the kernel, leaking nothing.
    const before = tf.memory().numTensors;
    const x = random([2, 4], 9) as tf.Tensor2D;
    const w = random([3, 4], 10) as tf.Tensor2D;
    const target = tf.tensor1d([1, 3], "int32");
    const weight = tf.ones([2]) as tf.Tensor1D;
    expect(() => headLossKernel(x, w, target, weight, 1)).toThrow(/target 3 of row 1 is outside the vocabulary \[0, 3\)/);
    tf.dispose([x, w, target, weight]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it("the loss refuses a label outside the vocabulary, on both paths, and the kernel a bad target, leaking nothing", () => {
    const logits = random([1, 3, 4], 1) as tf.Tensor3D;
    const labels = tf.tensor2d([[0, 2, 4]], [1, 3], "int32");
    for (const mode of ["off", "auto"] as const) {
      configureNativeKernels(mode);
      expect(() => causalLmLoss(logits, labels), mode).toThrow("label 4 at [0, 2] is outside the vocabulary [0, 4)");
    }
    const before = tf.memory().numTensors;
    const rows = logits.reshape([3, 4]) as tf.Tensor2D;
    const target = tf.tensor1d([0, 7, 1], "int32");
    const weight = tf.tensor1d([1, 1, 0]);
    expect(() => softmaxCrossEntropy(rows, target, weight, 1)).toThrow("target 7 of row 1 is outside the vocabulary [0, 4)");
    // A row of weight 0 is not read: its target may be anything.
    expect(softmaxCrossEntropy(rows, target, tf.tensor1d([1, 0, 1]), 1).dataSync()[0]).toBeGreaterThan(0);
    tf.dispose([rows, target, weight]);
    expect(tf.memory().numTensors).toBe(before + 2); // the second call's weight and loss, left to tidy
    tf.dispose([logits, labels]);
  });

  it("a backward pass makes no zero gradient for what an op keeps beside its value (the softmax, the sigmoid)", async () => {
    // tfjs gives every output of a tape node a gradient, zeros where none flows; kept tensors
    // are saved instead of being outputs, so the backward pass makes no tensor for them. Peaks
    // in tfjs's count of tensor bytes (a saved clone counts, though it shares the buffer), in
    // units of one [rows, vocab] tensor, beyond what stays: 1 and 8 here, 2 and 9 with the
    // kept tensors as outputs.
    const [rows, vocab] = [64, 4096];
    const bytes = rows * vocab * 4;
    const logits = random([rows, vocab], 7) as tf.Tensor2D;
    const target = tf.tensor1d(Int32Array.from({ length: rows }, (_, i) => (i * 37) % vocab), "int32");
    const weight = tf.ones([rows]) as tf.Tensor1D;
    const loss = await tf.profile(() => tf.grad((x: tf.Tensor) => softmaxCrossEntropy(x as tf.Tensor2D, target, weight, 1))(logits));
    expect(loss.peakBytes - tf.memory().numBytes).toBeLessThan(1.5 * bytes);
    const gate = random([1, rows, vocab], 8) as tf.Tensor3D;
    const mlp = await tf.profile(() => tf.grad((g: tf.Tensor) => swiglu(g as tf.Tensor3D, gate).sum())(gate));
    expect(mlp.peakBytes - tf.memory().numBytes).toBeLessThan(8.5 * bytes);
    tf.dispose([logits, target, weight, gate]);
  });

  it("RMSNorm: value and the gradients of x and weight, on odd widths and 2 or 3 axes", () => {
    let seed = 100;
    for (const shape of [[1, 1], [3, 17], [2, 5, 129], [4, 8, 128]]) {
      const x = random(shape, ++seed, 3);
      const weight = random([shape[shape.length - 1]], ++seed);
      const { stock, fused } = stockAndFused((a, w) => rmsNorm(a, w, 1e-6), [x, weight], seed);
      expectClose(fused, stock, 1e-5, `[${shape}]`);
      tf.dispose([x, weight]);
    }
  });

  it("SwiGLU: value and the gradients of gate and up, including saturated gates", () => {
    let seed = 200;
    for (const [shape, scale] of [[[1, 1, 1], 1], [[2, 3, 17], 4], [[2, 64, 384], 30]] as [number[], number][]) {
      const gate = random(shape, ++seed, scale);
      const up = random(shape, ++seed);
      const { stock, fused } = stockAndFused((g, u) => swiglu(g as tf.Tensor3D, u as tf.Tensor3D), [gate, up], seed);
      expectClose(fused, stock, 1e-5, `[${shape}] scale ${scale}`);
      tf.dispose([gate, up]);
    }
  });

  it("the LoRA projection: value and the gradients of x, W, A and B, with and without a dropout mask, odd sizes, x of 2 or 3 axes", () => {
    let seed = 400;
    // [rows (x's leading axes), in, out, r]; without dropout, 160 rows take the merged weight (rows >= in and out).
    for (const [lead, inDim, outDim, r] of [[[1], 1, 1, 1], [[5], 7, 3, 2], [[2, 32], 128, 384, 8], [[3, 11], 384, 128, 8], [[4, 40], 96, 128, 8]] as [number[], number, number, number][]) {
      const config = { hiddenSize: inDim, intermediateSize: outDim, numHiddenLayers: 1, numAttentionHeads: 1, numKeyValueHeads: 1 } as LlamaConfig;
      for (const dropout of [0, 0.3]) {
        const adapter = LoraAdapter.init(config, { r, alpha: 2 * r, dropout, targetModules: ["gate_proj"] }, ++seed);
        const name = "model.layers.0.mlp.gate_proj";
        const pair = adapter.pairs.get(name)!;
        pair.b.assign(random(pair.b.shape, ++seed)); // B starts at 0: A's gradient would be 0
        const x = tf.variable(random([...lead, inDim], ++seed));
        const w = tf.variable(random([outDim, inDim], ++seed)) as tf.Variable<tf.Rank.R2>;
        const dy = random([...lead, outDim], ++seed);
        const run = () =>
          tf.tidy(() => {
            adapter.reseedDropout(seed); // the same masks on both paths
            const y = adapter.linear(name, x, w, true).arraySync() as NestedNumbers;
            adapter.reseedDropout(seed);
            const { value, grads } = tf.variableGrads(() => adapter.linear(name, x, w, true).mul(dy).sum() as tf.Scalar, [x, w, pair.a, pair.b]);
            return [y, value.arraySync(), ...[x, w, pair.a, pair.b].map((v) => grads[v.name].arraySync() as NestedNumbers)];
          });
        configureNativeKernels("off");
        const stock = run();
        configureNativeKernels("auto");
        const fused = run();
        expectClose(fused, stock, 1e-5, `x [${lead}, ${inDim}] out ${outDim} r ${r} dropout ${dropout}`);
        tf.dispose([x, w, dy]);
        adapter.dispose();
      }
    }
  });

  it("attention and the decoder blocks: logits and the gradients of the deltas and of every adapter, with grouped heads, padding, dropout masks, adapters on some projections", async () => {
    // 4 heads on 2 key-value heads, head size 4; rows of 70, 45, 0 and 7 tokens (right padded):
    // 280 rows, more than any projection's sides, so without dropout the adapters are merged into
    // the weights. The blocks skip the padding after each row's last token: they compute rows
    // 0-114 (the full first row runs on into the second) and 210-216; attention takes 32 queries
    // at a time (the second row ends inside its second block).
    const model = tinyModel(21, { max_position_embeddings: 128 });
    const { ids, mask } = batchOf([randomIds(1, 70, 50, 22)[0], randomIds(1, 45, 50, 23)[0], [], randomIds(1, 7, 50, 29)[0]]);
    const labels = ids.where(mask.cast("bool"), tf.fill(ids.shape, IGNORE_INDEX, "int32")) as tf.Tensor2D;
    const deltas = [0, 1].map((l) => tf.variable(random([4, 70, 16], 24 + l, 0.3)));
    // Values at padded positions are whatever a path leaves there (nothing reads them): compared at real ones.
    const real = (x: tf.Tensor) => x.mul(mask.expandDims(2)).arraySync() as NestedNumbers;
    const cases: [string, LinearModule[], number][] = [
      ["q, k, v and o", ["q_proj", "k_proj", "v_proj", "o_proj"], 0],
      ["all seven projections, dropout 0.3", [...LINEAR_MODULES], 0.3],
      ["q, v and down only", ["q_proj", "v_proj", "down_proj"], 0],
    ];
    for (const [modules, targetModules, dropout] of cases) {
      const lora = LoraAdapter.init(model.config, { r: 2, alpha: 4, dropout, targetModules }, 26);
      for (const { b } of lora.pairs.values()) b.assign(random(b.shape, 27, 0.1));
      const run = () =>
        tf.tidy(() => {
          const logits = real(model.forward(ids, mask, { lora, deltas }).logits);
          const vars = [...deltas, ...lora.variables];
          lora.reseedDropout(5); // the same masks on both paths
          const { value, grads } = tf.variableGrads(() => causalLmLoss(model.forward(ids, mask, { lora, deltas, training: true }).logits, labels), vars);
          // A_l asked for: the blocks leave the residual add to tfjs.
          const attention = model.forward(ids, mask, { lora, deltas, returnAttentionOutputs: true });
          const outputs = [attention.logits, ...attention.attentionOutputs!].map(real);
          // The blocks write A_l = 0 where they skip (the single kernels and tfjs compute it).
          const skipped = attention.attentionOutputs!.map((a) => a.slice([1, 45, 0], [3, 25, 16]).abs().max().arraySync() as number);
          return [logits, value.arraySync(), ...vars.map((v) => grads[v.name].arraySync() as NestedNumbers), ...outputs, skipped];
        });
      configureNativeKernels("off");
      const stock = run();
      expect((stock.pop() as number[]).every((m) => m > 0)).toBe(true);
      configureNativeKernels("auto");
      // Frozen weights run the blocks; trainable ones (full-weight training) the single kernels.
      for (const trainable of [false, true]) {
        model.setTrainable(trainable);
        const where = `${modules}, ${trainable ? "single kernels" : "blocks"}`;
        const fused = run();
        const skipped = fused.pop() as number[];
        expect(skipped.every((m) => m === 0), where).toBe(!trainable);
        expectClose(fused, stock, 1e-5, where);
        // The gradients reach the first layer's q adapter (through the rotation and softmax).
        expect((fused[4] as number[][]).flat().some((g) => g !== 0), where).toBe(true);
      }
      model.setTrainable(false);
      // Vaccine's perturbation pass: the adapter without its gradients; the deltas' gradients the same.
      const deltaGrads = (opts: ForwardOptions) =>
        tf.tidy(() => {
          lora.reseedDropout(5);
          const { grads } = tf.variableGrads(() => causalLmLoss(model.forward(ids, mask, { ...opts, deltas, training: true }).logits, labels), deltas);
          return deltas.map((d) => grads[d.name].arraySync() as NestedNumbers);
        });
      const pass1 = { lora, adapterGradients: false };
      configureNativeKernels("off");
      const stockPass1 = deltaGrads(pass1);
      configureNativeKernels("auto");
      expectClose(deltaGrads(pass1), stockPass1, 1e-5, `${modules}, perturbation pass`);
      lora.dispose();
    }
    // The blocks ran: two kernels a layer forward and two backward.
    const lora = LoraAdapter.init(model.config, { r: 2, alpha: 4, dropout: 0, targetModules: [...LINEAR_MODULES] }, 28);
    const kernels = async () => {
      const info = await tf.profile(() => tf.tidy(() => tf.variableGrads(() => causalLmLoss(model.forward(ids, mask, { lora }).logits, labels), lora.variables).value));
      return info.kernels.map((k) => k.name);
    };
    const names = await kernels();
    for (const k of ["VaccineAttentionBlock", "VaccineAttentionBlockGrad", "VaccineMlpBlock", "VaccineMlpBlockGrad"]) expect(names.filter((n) => n === k)).toHaveLength(2);
    expect(names).not.toContain("VaccineLoraLinear");
    // Weights that take gradients (full-weight training) keep the single kernels, which give them.
    model.setTrainable(true);
    expect(await kernels()).not.toContain("VaccineMlpBlock");
    model.setTrainable(false);
    tf.dispose([ids, mask, labels, ...deltas]);
    lora.dispose();
    model.dispose();
  });

  it("attention keeps its softmax as causal blocks of 32 queries by the keys up to their last: about half of [t, t]", () => {
    if (!("addon" in loaded)) return;
    const sizes = [0, 1, 32, 33, 70, 512].map((t) => loaded.addon.attentionProbs(t));
    // 70: 32 x 32, 32 x 64, then 6 x 70.
    expect(sizes).toEqual([0, 1, 1024, 1024 + 33, 1024 + 2048 + 420, 139264]);
    expect(() => loaded.addon.attentionProbs(-1)).toThrow(/non-negative integer/);
  });

  it("the blocks pass the positions after a row's last token through the residual, value and gradient", () => {
    // Rows of 9 and 4 tokens: the blocks skip positions 4-8 of the second row. There each layer's
    // output is its input plus the delta (the blocks add nothing), and a loss that reads those
    // positions (none of the model's does) gets its gradient through to every layer's delta.
    const model = tinyModel(31);
    const lora = LoraAdapter.init(model.config, { r: 2, alpha: 4, dropout: 0.2, targetModules: [...LINEAR_MODULES] }, 32);
    const { ids, mask } = batchOf([randomIds(1, 9, 50, 33)[0], randomIds(1, 4, 50, 34)[0]]);
    const deltas = [0, 1].map((l) => tf.variable(random([2, 9, 16], 35 + l, 0.3)));
    const weights = random([2, 9, 16], 37);
    tf.tidy(() => {
      const { layerOutputs } = model.forward(ids, mask, { lora, deltas, training: true, returnLayerOutputs: true });
      const skipped = (x: tf.Tensor) => x.slice([1, 4, 0], [1, 5, 16]);
      const embedded = tf.gather(model.weights.get("model.embed_tokens.weight")!, ids);
      expect(skipped(layerOutputs![0]).arraySync()).toEqual(skipped(embedded.add(deltas[0])).arraySync());
      expect(skipped(layerOutputs![1]).arraySync()).toEqual(skipped(embedded.add(deltas[0]).add(deltas[1])).arraySync());
      const { grads } = tf.variableGrads(() => {
        const { layerOutputs: outs } = model.forward(ids, mask, { lora, deltas, training: true, returnLayerOutputs: true });
        return outs![1].mul(weights).sum() as tf.Scalar;
      }, deltas);
      for (const d of deltas) expect(skipped(grads[d.name]).arraySync()).toEqual(skipped(weights).arraySync());
    });
    tf.dispose([ids, mask, weights, ...deltas]);
    lora.dispose();
    model.dispose();
  });

  it("keeps numTensors flat over repeated gradients through all three", () => {
    configureNativeKernels("auto");
    const x = random([2, 6, 16], 300);
    const w = random([16], 301);
    const head = random([16, 11], 302);
    const labels = tf.tensor2d(Int32Array.from({ length: 12 }, (_, i) => i % 11), [2, 6], "int32");
    const loss = (a: tf.Tensor) => {
      const h = rmsNorm(a, w, 1e-6) as tf.Tensor3D;
      const m = swiglu(h, h.mul(2) as tf.Tensor3D);
      return causalLmLoss(tf.matMul(m.reshape([12, 16]), head).reshape([2, 6, 11]) as tf.Tensor3D, labels);
    };
    const once = () => tf.tidy(() => tf.valueAndGrad(loss)(x).grad.dispose());
    once();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) once();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, w, head, labels]);
  });

  it("the addon refuses operands outside the heap", () => {
    if (!("addon" in loaded)) return;
    const heap = new ArrayBuffer(64);
    expect(() => loaded.addon.crossEntropy(heap, 0, 32, 40, 48, 2, 4)).toThrow(/outside the heap/);
    expect(() => loaded.addon.crossEntropyGrad(heap, 0, 32, 40, 48, 2, 4, 1)).toThrow(/outside the heap/);
    expect(() => loaded.addon.rmsNorm(heap, 0, 32, 40, 56, 2, 4, 1e-6)).toThrow(/outside the heap/);
    expect(() => loaded.addon.rmsNormGrad(heap, 0, 16, 32, 40, 48, 2, 4)).toThrow(/outside the heap/);
    expect(() => loaded.addon.swiglu(heap, 0, 16, 32, 48, 5)).toThrow(/outside the heap/);
    expect(() => loaded.addon.swigluGrad(heap, 0, 16, 32, 48, 52, 4, 0)).toThrow(/outside the heap/);
    expect(() => loaded.addon.swiglu(heap, 0, 16, 32, 48, 4)).not.toThrow();
    // x [2, 2], W [2, 2], A [1, 2], B [2, 1], no mask, y [2, 2], xa [2, 1]: 64 bytes in all, then one float past the heap.
    expect(() => loaded.addon.loraLinear(heap, 0, 16, 32, 40, 0, 48, 56, 2, 2, 2, 1, 0, 1)).not.toThrow();
    expect(() => loaded.addon.loraLinear(heap, 0, 16, 32, 40, 0, 48, 60, 2, 2, 2, 1, 0, 1)).toThrow(/outside the heap/);
    expect(() => loaded.addon.loraLinear(heap, 0, 16, 32, 40, 56, 48, 56, 2, 2, 2, 1, 1, 1)).toThrow(/outside the heap/); // a mask [2, 2] at 56
    expect(() => loaded.addon.loraLinearGrad(heap, 3, 48, 0, 16, 32, 40, 0, 56, 52, 2, 2, 2, 1, 0, 1)).toThrow(/outside the heap/);
    // b 1, t 1, 2 heads on 1 kv head of size 2: q 4 floats, k and v 2, bias 1, cos and sin 2, out 4, qr 4, kr 2, probs 2.
    const att = [0, 16, 24, 32, 36, 44, 52, 68, 84, 92] as const;
    expect(() => loaded.addon.attention(new ArrayBuffer(100), ...att, 1, 1, 2, 1, 2)).not.toThrow();
    expect(() => loaded.addon.attention(new ArrayBuffer(96), ...att, 1, 1, 2, 1, 2)).toThrow(/outside the heap/);
    expect(() => loaded.addon.attention(new ArrayBuffer(100), ...att, 1, 1, 3, 2, 2)).toThrow(/multiple of kvHeads/);
    expect(() => loaded.addon.attentionGrad(new ArrayBuffer(64), ...att, 1, 1, 2, 1, 2)).toThrow(/outside the heap/);
    expect(() => loaded.addon.loraLinearGrad(heap, 4, 48, 0, 16, 32, 40, 0, 56, 0, 2, 2, 2, 1, 0, 1)).toThrow(/which/);
    // A size whose byte count wraps 64 bits (4 x 2^62) is refused, not read past the heap.
    expect(() => loaded.addon.exp(heap, 0, 0, 2 ** 62)).toThrow(/outside the heap/);
    // The blocks take their operands as a Float64Array of a fixed length; one outside the heap is refused.
    expect(() => loaded.addon.mlpBlock(heap, new Float64Array(34))).toThrow(/Float64Array of 35 operands/);
    expect(() => loaded.addon.attentionBlock(heap, new Float32Array(48) as unknown as Float64Array)).toThrow(/Float64Array of 48 operands/);
    // n 2, hidden 2, intermediate 2: every operand at 0 fits 16 bytes but x at 64 does not.
    const mlp = new Float64Array(35).fill(0);
    mlp.set([2, 2, 2, 1e-6]);
    for (const i of [9, 15, 21, 34]) mlp[i] = -1; // no masks, no ends
    mlp[33] = 1;
    expect(() => loaded.addon.mlpBlock(new ArrayBuffer(16), mlp)).not.toThrow();
    mlp[4] = 64;
    expect(() => loaded.addon.mlpBlock(new ArrayBuffer(16), mlp)).toThrow(/outside the heap/);
    mlp[4] = 0;
    mlp[0] = 2.5;
    expect(() => loaded.addon.mlpBlock(new ArrayBuffer(16), mlp)).toThrow(/integers/);
  });
});
