/**
 * Model throughput on each available tfjs backend: forward and forward+backward (full
 * weights) time and tokens/s for a small Llama, next to the backend's measured matMul
 * GFLOP/s in the same process, so the model FLOPs utilisation (MFU) is comparable across
 * machines. Writes bench/results/model-<backend>.json. Run: npx tsx bench/model.ts [backend...]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { parseLlamaConfig, type LlamaConfig } from "../services/runtime/model/config.ts";
import { LlamaModel, llamaWeightShapes } from "../services/runtime/model/llama.ts";
import { causalLmLoss } from "../services/runtime/model/loss.ts";

const BATCH = 8;
const SEQ = 64;
const CONFIG = parseLlamaConfig({
  vocab_size: 512,
  hidden_size: 128,
  intermediate_size: 384,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  max_position_embeddings: 256,
});
const MATMUL_N = 512;

/** Matmul FLOPs of one forward pass: 2 per multiply-add, attention over all T^2 pairs (the mask is applied, not skipped). */
function forwardFlops(c: LlamaConfig, b: number, t: number): number {
  const tokens = b * t;
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const perLayer = d * q + 2 * d * kv + q * d + 3 * d * c.intermediateSize;
  const linear = 2 * tokens * (c.numHiddenLayers * perLayer + d * c.vocabSize);
  const attention = 2 * 2 * b * c.numAttentionHeads * t * t * c.headDim * c.numHiddenLayers;
  return linear + attention;
}

/** Median wall time in ms of fn (which must block until its result is computed). */
function time(fn: () => void, iterations: number): number {
  fn(); // warm-up: kernel compilation, memory pools
  const ms: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const start = performance.now();
    fn();
    ms.push(performance.now() - start);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)];
}

function matmulGflops(iterations: number): number {
  const a = tf.randomNormal([MATMUL_N, MATMUL_N]);
  const b = tf.randomNormal([MATMUL_N, MATMUL_N]);
  const ms = time(() => tf.tidy(() => void tf.matMul(a, b).dataSync()), iterations);
  tf.dispose([a, b]);
  return (2 * MATMUL_N ** 3) / (ms * 1e6);
}

async function bench(backend: string): Promise<void> {
  const selection = await selectBackend(backend, () => {});
  const slow = selection.backend === "cpu";
  const iterations = slow ? 3 : 10;
  const model = LlamaModel.init(CONFIG, 0, { trainable: true });
  const ids = tf.randomUniform([BATCH, SEQ], 0, CONFIG.vocabSize, "int32") as tf.Tensor2D;
  const mask = tf.onesLike(ids).toFloat() as tf.Tensor2D;
  const forward = () => tf.tidy(() => void model.forward(ids, mask).logits.dataSync());
  const train = () =>
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(model.forward(ids, mask).logits, ids));
      value.dataSync();
      for (const g of Object.values(grads)) g.dataSync();
    });
  const gflops = matmulGflops(iterations);
  const fwdMs = time(forward, iterations);
  const trainMs = time(train, iterations);
  model.dispose();
  tf.dispose([ids, mask]);

  const tokens = BATCH * SEQ;
  const fwdFlops = forwardFlops(CONFIG, BATCH, SEQ);
  // Backward with weight gradients costs about twice the forward's matmuls.
  const trainFlops = 3 * fwdFlops;
  const result = {
    benchmark: "model",
    backend: selection.backend,
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model ?? "unknown", cores: os.cpus().length, node: process.version, tfjs: tf.version.tfjs },
    config: { ...CONFIG, batch: BATCH, seq: SEQ, params: paramCount(CONFIG) },
    matmul: { n: MATMUL_N, gflopsPerSec: round(gflops) },
    forward: stats(fwdMs, tokens, fwdFlops, gflops),
    forwardBackward: stats(trainMs, tokens, trainFlops, gflops),
    iterations,
  };
  mkdirSync("bench/results", { recursive: true });
  const path = `bench/results/model-${selection.backend}.json`;
  writeFileSync(path, JSON.stringify(result, null, 2) + "\n");
  console.log(`${path}: ${JSON.stringify({ matmul: result.matmul, forward: result.forward, forwardBackward: result.forwardBackward })}`);
}

function stats(ms: number, tokens: number, flops: number, peakGflops: number) {
  const gflopsPerSec = flops / (ms * 1e6);
  return {
    ms: round(ms),
    tokensPerSec: round((tokens * 1000) / ms),
    modelGflops: round(flops / 1e9),
    gflopsPerSec: round(gflopsPerSec),
    mfu: round(gflopsPerSec / peakGflops),
  };
}

function paramCount(c: LlamaConfig): number {
  let n = 0;
  for (const shape of llamaWeightShapes(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

function round(x: number): number {
  return Number(x.toPrecision(4));
}

const backends = process.argv.slice(2);
for (const b of backends.length > 0 ? backends : ["wasm", "cpu"]) await bench(b);
