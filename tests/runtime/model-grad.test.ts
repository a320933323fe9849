import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { causalLmLoss, causalLmLossWithCount } from "../../services/runtime/model/loss.ts";
import { Rng } from "../../services/runtime/rng.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";

describe("causalLmLoss", () => {
  beforeAll(async () => {
    await selectBackend("cpu", () => {});
  });

  it("shifts by one token and averages over non-ignored labels only", () => {
    const rng = new Rng(3);
    const [b, t, v] = [2, 4, 5];
    const logits = Array.from({ length: b }, () => Array.from({ length: t }, () => Array.from({ length: v }, () => rng.normal() * 3)));
    const labels = [
      [-100, 1, 4, -100],
      [-100, -100, 0, 2],
    ];
    let sum = 0;
    let n = 0;
    for (let i = 0; i < b; i++) {
      for (let j = 1; j < t; j++) {
        if (labels[i][j] === -100) continue;
        const row = logits[i][j - 1];
        const lse = Math.log(row.reduce((a, x) => a + Math.exp(x), 0));
        sum += lse - row[labels[i][j]];
        n++;
      }
    }
    const { loss, tokens } = causalLmLossWithCount(tf.tensor3d(logits), tf.tensor2d(labels, [b, t], "int32"));
    expect(tokens).toBe(4);
    expect(loss.dataSync()[0]).toBeCloseTo(sum / n, 5);
    loss.dispose();
  });

  it("is stable for huge logits and 0 when every label is ignored", () => {
    const big = tf.tensor3d([[[1e4, 0, -1e4], [0, 0, 0]]]);
    const l = causalLmLoss(big, tf.tensor2d([[-100, 1]], [1, 2], "int32"));
    expect(l.dataSync()[0]).toBeCloseTo(1e4, 0);
    const none = causalLmLoss(big, tf.tensor2d([[-100, -100]], [1, 2], "int32"));
    expect(none.dataSync()[0]).toBe(0);
  });
});

describe.each(["cpu", "wasm"])("gradients on %s", (backend) => {
  let model: LlamaModel;
  const [B, T, D] = [2, 6, 16];
  let ids: tf.Tensor2D;
  let mask: tf.Tensor2D;
  let labels: tf.Tensor2D;

  beforeAll(async () => {
    await selectBackend(backend, () => {});
    model = tinyModel(4);
    const rows = [randomIds(1, 6, 50, 10)[0], randomIds(1, 4, 50, 11)[0]];
    ({ ids, mask } = batchOf(rows));
    labels = tf.tensor2d(
      rows.map((r) => [-100, ...r.slice(1), ...new Array<number>(T - r.length).fill(-100)]),
      [B, T],
      "int32",
    );
  });
  afterAll(() => {
    model.dispose();
    tf.dispose([ids, mask, labels]);
  });

  const lossAt = (deltas?: tf.Tensor[]) => causalLmLoss(model.forward(ids, mask, { deltas }).logits, labels);

  it("d loss / d delta_l matches central finite differences", () => {
    // float32: the loss (~4) carries ~5e-7 relative rounding, so with eps = 1e-2 the
    // difference quotient has ~1e-4 absolute noise; truncation error is O(eps^2) ~ 1e-4
    // relative. A 1e-2 relative tolerance (with a 1e-3 floor) is loose enough for that
    // and still two orders tighter than any convention error (a wrong sign or position
    // gives errors of order 1).
    const eps = 1e-2;
    const zeros = [0, 1].map(() => tf.zeros([B, T, D]));
    const grads = tf.grads((...d: tf.Tensor[]) => lossAt(d))(zeros);
    const rng = new Rng(5);
    const dirs = [0, 1].map(() => tf.tensor(rng.normalArray(B * T * D, 1), [B, T, D]));
    const norm = Math.sqrt(dirs.reduce((a, u) => a + u.square().sum().dataSync()[0], 0));
    const unit = dirs.map((u) => u.div(norm));
    const analytic = grads.reduce((a, g, l) => a + g.mul(unit[l]).sum().dataSync()[0], 0);
    const plus = lossAt(unit.map((u) => u.mul(eps))).dataSync()[0];
    const minus = lossAt(unit.map((u) => u.mul(-eps))).dataSync()[0];
    const numeric = (plus - minus) / (2 * eps);
    expect(Math.abs(analytic)).toBeGreaterThan(1e-2);
    expect(Math.abs(numeric - analytic)).toBeLessThan(Math.max(1e-3, 1e-2 * Math.abs(analytic)));

    // The largest coordinates of layer 0 and layer 1, one at a time.
    for (const l of [0, 1]) {
      const g = grads[l].dataSync();
      let k = 0;
      for (let i = 1; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[k])) k = i;
      const bump = (s: number) => {
        const d = [0, 1].map((j) => (j === l ? tf.oneHot(tf.tensor1d([k], "int32"), B * T * D).reshape([B, T, D]).mul(s) : tf.zeros([B, T, D])));
        return lossAt(d).dataSync()[0];
      };
      const fd = (bump(eps) - bump(-eps)) / (2 * eps);
      expect(Math.abs(fd - g[k])).toBeLessThan(Math.max(1e-3, 1e-2 * Math.abs(g[k])));
      // Padded positions (row 1, t >= 4) get no gradient: their logits are never scored.
      const padded = grads[l].slice([1, 4, 0], [1, 2, D]).abs().max().dataSync()[0];
      expect(padded).toBe(0);
    }
    tf.dispose([...zeros, ...grads, ...dirs, ...unit]);
  });

  it("keeps tf.memory().numTensors flat over training steps (full, LoRA, deltas, two-pass)", () => {
    const adapter = LoraAdapter.init(model.config, { r: 2, alpha: 4, dropout: 0.1, targetModules: ["q_proj", "v_proj", "down_proj"] }, 1);
    // One optimizer per variable list: tfjs's Adam keys its slots by position in the list.
    // (Typed as the base class: AdamOptimizer's own applyGradients signature rejects variableGrads' map.)
    let optimizer: tf.Optimizer = tf.train.adam(1e-3);
    const deltas = [0, 1].map(() => tf.randomNormal([B, T, D], 0, 0.1, "float32", 3));
    const step = (kind: string) => {
      tf.tidy(() => {
        if (kind === "full") {
          model.setTrainable(true);
          const { value, grads } = tf.variableGrads(() => lossAt(), model.trainableVariables);
          optimizer.applyGradients(grads);
          value.dataSync();
          model.setTrainable(false);
          return;
        }
        if (kind === "two-pass") {
          // The Vaccine shape: gradient wrt zero deltas, then a LoRA step under the perturbation.
          const zeros = [0, 1].map(() => tf.zeros([B, T, D]));
          const g = tf.grads((...d: tf.Tensor[]) => causalLmLoss(model.forward(ids, mask, { deltas: d, lora: adapter, training: true }).logits, labels))(zeros);
          const norm = tf.sqrt(tf.addN(g.map((x) => x.square().sum())));
          const eps = g.map((x) => x.mul(0.5).div(norm.add(1e-7)));
          const { grads } = tf.variableGrads(
            () => causalLmLoss(model.forward(ids, mask, { deltas: eps, lora: adapter, training: true }).logits, labels),
            adapter.variables,
          );
          optimizer.applyGradients(grads);
          return;
        }
        const opts = kind === "lora+deltas" ? { deltas, lora: adapter, training: true } : { lora: adapter, training: true };
        const { grads } = tf.variableGrads(() => causalLmLoss(model.forward(ids, mask, opts).logits, labels), adapter.variables);
        optimizer.applyGradients(grads);
      });
    };
    for (const kind of ["full", "lora", "lora+deltas", "two-pass"]) {
      optimizer.dispose();
      optimizer = tf.train.adam(1e-3);
      step(kind); // the first step creates the optimizer's slots for these variables
      const after = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) {
        step(kind);
        expect(tf.memory().numTensors, kind).toBe(after);
      }
    }
    optimizer.dispose();
    adapter.dispose();
    tf.dispose(deltas);
  });

  it("full-weight training lowers the loss (the base model is pre-trained this way)", () => {
    const m = tinyModel(9, {}, 0.02);
    m.setTrainable(true);
    const optimizer = tf.train.adam(1e-2);
    const loss = () => causalLmLoss(m.forward(ids, mask).logits, labels);
    const first = tf.tidy(() => loss().dataSync()[0]);
    for (let i = 0; i < 30; i++) tf.tidy(() => void optimizer.minimize(loss, false, m.trainableVariables));
    const last = tf.tidy(() => loss().dataSync()[0]);
    expect(last).toBeLessThan(first * 0.5);
    optimizer.dispose();
    m.dispose();
  });
});
