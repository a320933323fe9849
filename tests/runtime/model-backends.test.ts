import * as tf from "@tensorflow/tfjs";
import { describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { LoraAdapter, type LoraConfig } from "../../services/runtime/model/lora.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";

/** Logits (at real positions), loss and the gradient wrt the layer-0 delta, with a LoRA adapter, on the active backend. */
function run(model: LlamaModel, adapter: LoraAdapter, rows: number[][]): Float32Array[] {
  return tf.tidy(() => {
    const { ids, mask } = batchOf(rows);
    const labels = ids.where(mask.cast("bool"), tf.fill(ids.shape, -100, "int32")) as tf.Tensor2D;
    const zeros = [0, 1].map(() => tf.zeros([rows.length, ids.shape[1], 16]));
    const f = (...d: tf.Tensor[]) => causalLmLoss(model.forward(ids, mask, { deltas: d, lora: adapter }).logits, labels);
    const [g0] = tf.grads(f)(zeros);
    // At real positions: what a path leaves at padding is not read (the native blocks skip it).
    const logits = model.forward(ids, mask, { lora: adapter }).logits.mul(mask.expandDims(2));
    return [logits, f(...zeros), g0].map((t) => t.dataSync() as Float32Array);
  });
}

describe("backends agree", () => {
  it("the same model gives the same logits, loss and delta gradients on cpu and wasm", async () => {
    const rows = [randomIds(1, 7, 50, 41)[0], randomIds(1, 3, 50, 42)[0]];
    const lora = { r: 2, alpha: 4, dropout: 0, targetModules: ["q_proj", "o_proj", "up_proj"] } satisfies LoraConfig;
    // Built on cpu, moved to wasm through host tensors, as a checkpoint would be.
    await selectBackend("cpu", () => {});
    const built = tinyModel(6);
    const builtAdapter = LoraAdapter.init(built.config, lora, 1);
    for (const { b } of builtAdapter.pairs.values()) b.assign(tf.fill(b.shape, 0.05));
    const weights = built.exportWeights();
    const adapterWeights = builtAdapter.exportWeights();
    const results: Float32Array[][] = [];
    for (const backend of ["cpu", "wasm"]) {
      await selectBackend(backend, () => {});
      const model = LlamaModel.fromWeights(built.config, weights);
      const adapter = LoraAdapter.fromWeights(model.config, lora, adapterWeights);
      results.push(run(model, adapter, rows));
      model.dispose();
      adapter.dispose();
    }
    await selectBackend("cpu", () => {});
    built.dispose();
    builtAdapter.dispose();
    const [cpu, wasm] = results;
    const diff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
    expect(diff(cpu[0], wasm[0])).toBeLessThan(1e-4);
    expect(diff(cpu[1], wasm[1])).toBeLessThan(1e-5);
    expect(diff(cpu[2], wasm[2])).toBeLessThan(1e-5);
  });
});
