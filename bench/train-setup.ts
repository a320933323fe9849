/**
 * The training-step setup bench/train-step.ts and bench/train-profile.ts share: issue 17's
 * configs, a random batch, one step of SFT or Vaccine with AdamW and clipping (on this thread,
 * or data-parallel over worker threads), and the matmul FLOPs a step needs.
 */
import * as tf from "@tensorflow/tfjs";
import { parseLlamaConfig, type LlamaConfig } from "../services/runtime/model/config.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { LoraAdapter, type LoraConfig } from "../services/runtime/model/lora.ts";
import { AdamW, clipCoefficient } from "../services/runtime/train/adamw.ts";
import { DataParallelTrainer } from "../services/runtime/train/data-parallel.ts";
import { SftStep, type StepOutput, type TrainBatch } from "../services/runtime/train/step.ts";
import { VaccineStep } from "../services/runtime/train/vaccine-step.ts";

export const BATCH = 8;
export const TOKENS = 64;
export const VOCAB = 2048;
export const RANK = 8;
export const RHO = 2;

export const CONFIGS = {
  "4x128": { hidden_size: 128, intermediate_size: 384, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 4 },
  "6x256": { hidden_size: 256, intermediate_size: 768, num_hidden_layers: 6, num_attention_heads: 8, num_key_value_heads: 8 },
} as const;
export type ConfigName = keyof typeof CONFIGS;
export const METHODS = ["sft", "vaccine"] as const;
export type Method = (typeof METHODS)[number];

export function llamaConfig(name: ConfigName): LlamaConfig {
  return parseLlamaConfig({ ...CONFIGS[name], vocab_size: VOCAB, max_position_embeddings: 256, rms_norm_eps: 1e-6, rope_theta: 10000 });
}

/**
 * Matmul FLOPs one step needs (2 per multiply-add): forward F; the backward of an update
 * pass computes every input gradient (base linears, head, both attention operands) and the
 * LoRA weight gradients, not the frozen weights'; Vaccine's pass 1 is a forward and the
 * input gradients only. Element-wise ops are not counted (the usual convention for MFU).
 */
export function stepFlops(c: LlamaConfig, method: Method): number {
  const tokens = BATCH * TOKENS;
  const d = c.hiddenSize, q = c.numAttentionHeads * c.headDim, kv = c.numKeyValueHeads * c.headDim, f = c.intermediateSize;
  const shapes = [[d, q], [d, kv], [d, kv], [q, d], [d, f], [d, f], [f, d]];
  const linear = 2 * tokens * shapes.reduce((s, [i, o]) => s + i * o, 0) * c.numHiddenLayers;
  const lora = 2 * tokens * shapes.reduce((s, [i, o]) => s + RANK * (i + o), 0) * c.numHiddenLayers;
  const attention = 2 * 2 * BATCH * c.numAttentionHeads * TOKENS * TOKENS * c.headDim * c.numHiddenLayers;
  const head = 2 * tokens * d * c.vocabSize;
  const forward = linear + lora + attention + head;
  const inputGrads = linear + lora + 2 * attention + head;
  const update = forward + inputGrads + lora;
  return method === "sft" ? update : forward + inputGrads + update;
}

const LORA: LoraConfig = { r: RANK, alpha: 2 * RANK, dropout: 0, targetModules: [...LINEAR_MODULES] };

/** The random tokens of step i (the batch labels every position). */
const tokensOf = (i: number) => tf.randomUniform([BATCH, TOKENS], 3, VOCAB, "int32", i) as tf.Tensor2D;

/** A seeded LoRA training setup; step(i) runs step i on random tokens (every position labelled). */
export function trainingSetup(name: ConfigName, method: Method) {
  const config = llamaConfig(name);
  const model = LlamaModel.init(config, 0);
  const lora = LoraAdapter.init(config, LORA, 1);
  const params = new Map(lora.variables.map((v) => [v.name, v]));
  const optimizer = new AdamW(params, { weightDecay: 0.1 });
  const stepFn = method === "sft" ? new SftStep() : new VaccineStep(RHO);
  const step = (i: number): StepOutput => {
    const ids = tokensOf(i);
    const batch: TrainBatch = { inputIds: ids, attentionMask: tf.onesLike(ids), labels: ids.clone(), tokens: BATCH * (TOKENS - 1) };
    try {
      return stepFn.run({
        model, lora, params, batch, step: i, phase: (_, fn) => fn(),
        update: (_loss, grads) => {
          const { norm, scale } = clipCoefficient(grads, 1);
          optimizer.apply(grads, 1e-3, scale);
          grads.forEach((g) => g.dispose());
          return norm;
        },
      });
    } finally {
      tf.dispose([batch.inputIds, batch.attentionMask, batch.labels]);
    }
  };
  return { config, step };
}

/**
 * The same setup trained data-parallel on `threads` worker threads (services/runtime/train/
 * data-parallel.ts), each on its rows of the batch with OpenBLAS on blasThreads threads.
 */
export async function dataParallelSetup(name: ConfigName, method: Method, threads: number, blasThreads: number) {
  const config = llamaConfig(name);
  const model = LlamaModel.init(config, 0);
  const lora = LoraAdapter.init(config, LORA, 1);
  const trainer = await DataParallelTrainer.start({
    config, weights: model.exportWeights(), lora: { config: LORA, weights: lora.exportWeights() },
    recipe: { method: method === "sft" ? { kind: "sft" } : { kind: "vaccine", rho: RHO, refreshEvery: 1 }, seed: 0 }, weightDecay: 0.1, threads, blasThreads,
  });
  model.dispose();
  lora.dispose();
  const step = (i: number) => {
    const ids = tokensOf(i);
    const data = ids.dataSync() as Int32Array;
    ids.dispose();
    const batch = { inputIds: data, attentionMask: new Int32Array(data.length).fill(1), labels: data.slice(), batch: BATCH, seqLen: TOKENS, unsupervised: 0, truncated: 0 };
    return trainer.step({ batch, step: i, learningRate: 1e-3, gradClip: 1, dropoutSeed: 0 });
  };
  return { config, step, close: () => trainer.close() };
}
