import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { fromPeftConfig, fromPeftTensors, toPeftConfig, toPeftTensors } from "../../services/runtime/checkpoint/peft-folder.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import { LoraAdapter, mergeLora, type LoraConfig } from "../../services/runtime/model/lora.ts";
import { Rng } from "../../services/runtime/rng.ts";
import { batchOf, randomIds, tinyModel } from "../helpers/tiny-model.ts";

const ALL: LoraConfig = {
  r: 4,
  alpha: 8,
  dropout: 0,
  targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
};

function logits(model: LlamaModel, rows: number[][], adapter?: LoraAdapter, training = false): Float32Array {
  return tf.tidy(() => {
    const { ids, mask } = batchOf(rows);
    return model.forward(ids, mask, { lora: adapter, training }).logits.dataSync() as Float32Array;
  });
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Gives every B a seeded random value, as training would. */
function randomizeB(adapter: LoraAdapter, seed: number): void {
  const rng = new Rng(seed);
  for (const { b } of adapter.pairs.values()) b.assign(tf.tensor(rng.normalArray(b.size, 0.3), b.shape));
}

describe("LoRA (PEFT semantics)", () => {
  let model: LlamaModel;
  const rows = randomIds(2, 6, 50, 21);
  beforeAll(async () => {
    await selectBackend("cpu", () => {});
    model = tinyModel(3);
  });
  afterAll(() => model.dispose());

  it("initialises A Kaiming-uniform (bound 1/sqrt(in)) and B to zero, seeded", () => {
    const a = LoraAdapter.init(model.config, ALL, 7);
    const again = LoraAdapter.init(model.config, ALL, 7);
    const q = a.pairs.get("model.layers.0.self_attn.q_proj")!;
    const down = a.pairs.get("model.layers.1.mlp.down_proj")!;
    expect(q.a.shape).toEqual([4, 16]);
    expect(q.b.shape).toEqual([16, 4]);
    expect(down.a.shape).toEqual([4, 32]);
    expect(a.pairs.get("model.layers.0.self_attn.k_proj")!.b.shape).toEqual([8, 4]); // 2 kv heads * 4
    expect(a.scaling).toBe(2);
    const qa = q.a.dataSync();
    const bound = 1 / Math.sqrt(16); // gain sqrt(2/(1+5)) * sqrt(3/16)
    expect(Math.max(...qa.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...qa.map(Math.abs))).toBeGreaterThan(bound * 0.8);
    expect(Math.max(...down.a.dataSync().map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(32));
    expect(q.b.dataSync().every((x) => x === 0)).toBe(true);
    expect(Array.from(again.pairs.get("model.layers.0.self_attn.q_proj")!.a.dataSync())).toEqual(Array.from(qa));
    expect(a.variables).toHaveLength(2 * 7 * 2);
    a.dispose();
    again.dispose();
  });

  it("with B = 0 leaves the outputs unchanged", () => {
    const a = LoraAdapter.init(model.config, ALL, 1);
    expect(maxAbsDiff(logits(model, rows, a), logits(model, rows))).toBe(0);
    a.dispose();
  });

  it("merge(base, adapter) gives the same logits as base + adapter unmerged", () => {
    const a = LoraAdapter.init(model.config, ALL, 2);
    randomizeB(a, 3);
    const unmerged = logits(model, rows, a);
    expect(maxAbsDiff(unmerged, logits(model, rows))).toBeGreaterThan(1e-2);
    const merged = mergeLora(model, a);
    expect(maxAbsDiff(logits(merged, rows), unmerged)).toBeLessThan(1e-4);
    merged.dispose();
    a.dispose();
  });

  it("stacks a fresh adapter over the merged one (double LoRA, as fine-tuning over an aligned checkpoint loads it)", () => {
    const align = LoraAdapter.init(model.config, { ...ALL, targetModules: ["q_proj", "v_proj"] }, 4);
    randomizeB(align, 5);
    const aligned = mergeLora(model, align);
    const user = LoraAdapter.init(aligned.config, ALL, 6);
    expect(maxAbsDiff(logits(aligned, rows, user), logits(model, rows, align))).toBeLessThan(1e-4);
    aligned.dispose();
    user.dispose();
    align.dispose();
  });

  it("round-trips its weights, and through PEFT tensor names and adapter_config.json", () => {
    const cfg: LoraConfig = { r: 2, alpha: 1, dropout: 0.1, targetModules: ["q_proj", "up_proj"] };
    const a = LoraAdapter.init(model.config, cfg, 8);
    randomizeB(a, 9);
    const tensors = a.exportWeights();
    expect([...tensors.keys()].slice(0, 4)).toEqual([
      "model.layers.0.self_attn.q_proj.lora_A.weight",
      "model.layers.0.self_attn.q_proj.lora_B.weight",
      "model.layers.0.mlp.up_proj.lora_A.weight",
      "model.layers.0.mlp.up_proj.lora_B.weight",
    ]);
    const peft = toPeftTensors(tensors);
    expect([...peft.keys()].slice(0, 2)).toEqual([
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    ]);
    const json = toPeftConfig(cfg, "store://checkpoints/base");
    expect(json).toMatchObject({ base_model_name_or_path: "store://checkpoints/base", peft_type: "LORA", task_type: "CAUSAL_LM", bias: "none", r: 2, lora_alpha: 1, lora_dropout: 0.1, target_modules: ["q_proj", "up_proj"] });
    const back = LoraAdapter.fromWeights(model.config, fromPeftConfig(JSON.parse(JSON.stringify(json))), fromPeftTensors(peft));
    expect(maxAbsDiff(logits(model, rows, back), logits(model, rows, a))).toBe(0);
    back.dispose();

    tensors.delete("model.layers.1.mlp.up_proj.lora_B.weight");
    tensors.set("model.layers.0.self_attn.k_proj.lora_A.weight", { shape: [2, 16], data: new Float32Array(32) });
    expect(() => LoraAdapter.fromWeights(model.config, cfg, tensors)).toThrow(
      /missing model\.layers\.1\.mlp\.up_proj\.lora_B\.weight.*unexpected model\.layers\.0\.self_attn\.k_proj\.lora_A\.weight/,
    );
    expect(() => LoraAdapter.init(model.config, { ...cfg, targetModules: ["qkv"] as never }, 0)).toThrow(/unknown target module "qkv"/);
    a.dispose();
  });

  it("applies dropout only when training, with fresh masks per call", () => {
    const a = LoraAdapter.init(model.config, { ...ALL, dropout: 0.5 }, 10);
    randomizeB(a, 11);
    const evalA = logits(model, rows, a);
    expect(maxAbsDiff(logits(model, rows, a), evalA)).toBe(0);
    const t1 = logits(model, rows, a, true);
    const t2 = logits(model, rows, a, true);
    expect(maxAbsDiff(t1, evalA)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(t1, t2)).toBeGreaterThan(1e-3);
    a.dispose();
  });

  it("drops each input element with probability `dropout` and scales the rest by 1 / (1 - dropout), reproducibly per seed", () => {
    // With A = I-like rows and B = 1 the branch sums its (masked) inputs: read the masks through it.
    const config: LoraConfig = { r: 1, alpha: 1, dropout: 0.25, targetModules: ["q_proj"] };
    const name = "model.layers.0.self_attn.q_proj";
    const masked = (a: LoraAdapter, x: tf.Tensor2D) =>
      tf.tidy(() => {
        const p = a.pairs.get(name)!;
        p.a.assign(tf.oneHot([0], p.a.shape[1]!).toFloat());
        p.b.assign(tf.ones(p.b.shape));
        // W = 0 leaves the branch alone.
        return a.linear(name, x, tf.zeros([p.b.shape[0]!, p.a.shape[1]!]), true).slice([0, 0], [-1, 1]).dataSync() as Float32Array;
      });
    const x = tf.ones([20000, model.config.hiddenSize]) as tf.Tensor2D;
    const a = LoraAdapter.init(model.config, config, 7);
    a.reseedDropout(42);
    const first = masked(a, x);
    const kept = first.filter((v) => v !== 0);
    expect(new Set(kept)).toEqual(new Set([Math.fround(1 / 0.75)]));
    expect(Math.abs(kept.length / first.length - 0.75)).toBeLessThan(0.015);
    expect(masked(a, x), "a fresh mask per call").not.toEqual(first);
    a.reseedDropout(42);
    expect(masked(a, x), "the same mask after the same reseed").toEqual(first);
    x.dispose();
    a.dispose();
  });

  it("trains only the adapter weights", () => {
    const a = LoraAdapter.init(model.config, ALL, 12);
    const before = model.exportWeights();
    const { ids, mask } = batchOf(rows);
    const optimizer = tf.train.sgd(0.1);
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() => model.forward(ids, mask, { lora: a }).logits.square().mean() as tf.Scalar);
      expect(Object.keys(grads).sort()).toEqual(a.variables.map((v) => v.name).sort());
      optimizer.applyGradients(grads);
    });
    for (const [name, w] of model.exportWeights()) expect(w.data).toEqual(before.get(name)!.data);
    expect(a.pairs.get("model.layers.0.self_attn.q_proj")!.b.abs().sum().dataSync()[0]).toBeGreaterThan(0);
    tf.dispose([ids, mask]);
    optimizer.dispose();
    a.dispose();
  });
});
