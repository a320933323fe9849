/**
 * Step time of SFT against Vaccine (and accelerated Vaccine, tau = 10) on the same batches:
 * the ratio the paper reports (1.93x-2.0x on A100; ours must stay at most 2.0x), the split
 * between pass 1 (perturbation) and pass 2 (update, including the optimizer step), tokens/s
 * and peak tensor memory. Two shapes: the shipped base model's config (models/base) and a
 * larger one. The three methods' steps are interleaved, a round at a time. Writes
 * bench/results/vaccine-step.json. Run: npx tsx bench/vaccine-step.ts
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { worldVocabularyTexts } from "../services/runtime/data/world/index.ts";
import { parseLlamaConfig } from "../services/runtime/model/config.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { LoraAdapter } from "../services/runtime/model/lora.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../services/runtime/tokenizer.ts";
import { Trainer, type StepMetrics } from "../services/runtime/train/loop.ts";
import { SftStep, type StepFunction } from "../services/runtime/train/step.ts";
import { VaccineStep } from "../services/runtime/train/vaccine-step.ts";
import { median } from "./stats.ts";

const STEPS = 32;
const WARMUP = 2;
const BATCH = 8;

const tokenizer = loadTokenizer(buildWordTokenizer(worldVocabularyTexts(0)), wordTokenizerConfig());
const built = loadBuiltin("alignment", { size: 400, seed: 0 });
if (built.kind !== "examples") throw new Error("the alignment dataset holds examples");
const data = built.examples;
const baseConfig = existsSync("models/base/config.json")
  ? JSON.parse(readFileSync("models/base/config.json", "utf8"))
  : { hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4 };
const shapes = {
  "built-in": { ...baseConfig, vocab_size: tokenizer.vocabSize, max_position_embeddings: 256 },
  larger: { vocab_size: tokenizer.vocabSize, hidden_size: 256, intermediate_size: 768, num_hidden_layers: 6, num_attention_heads: 8, num_key_value_heads: 8, max_position_embeddings: 256 },
};

/**
 * One method's training run, a step at a time, so the methods' steps can be interleaved (the
 * machine is shared: load that comes and goes then falls on every method alike). Tensor
 * memory is counted as this run's own: what it holds (tfjs's byte count changes only inside
 * its own calls) plus the most a step adds on top, which the first (warm-up, untimed) step
 * reads under tf.profile: its peak sees the tensors a pass holds on its tape, which the byte
 * count between phases does not.
 */
function runner(configJson: Record<string, unknown>, make: () => StepFunction) {
  const before = tf.memory().numBytes;
  const config = parseLlamaConfig(configJson);
  const model = LlamaModel.init(config, 0);
  const adapter = LoraAdapter.init(config, { r: 8, alpha: 16, dropout: 0.1, targetModules: [...LINEAR_MODULES] }, 1);
  const trainer = new Trainer({
    model, lora: adapter, data, tokenizer, stepFn: make(),
    options: { learningRate: 1e-3, maxSteps: STEPS, batchSize: BATCH, maxSequenceLength: 200, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 0 },
  });
  const metrics: StepMetrics[] = [];
  let held = tf.memory().numBytes - before;
  let peakBytes = held;
  return {
    async step() {
      const start = tf.memory().numBytes;
      let top = start;
      const run = () => {
        metrics.push(trainer.runStep((_, fn) => {
          const out = fn();
          top = Math.max(top, tf.memory().numBytes);
          return out;
        }));
      };
      if (metrics.length === 0) top = Math.max(top, (await tf.profile(run)).peakBytes);
      else run();
      peakBytes = Math.max(peakBytes, held + top - start);
      held += tf.memory().numBytes - start;
    },
    finish() {
      trainer.dispose();
      adapter.dispose();
      model.dispose();
      const timed = metrics.slice(WARMUP);
      const mean = (f: (m: StepMetrics) => number) => timed.reduce((s, m) => s + f(m), 0) / timed.length;
      return {
        stepMs: mean((m) => m.stepMs),
        stepMsAll: timed.map((m) => m.stepMs),
        perturbationMs: mean((m) => m.perturbationMs),
        updateMs: mean((m) => m.updateMs),
        tokensPerSecond: (mean((m) => m.tokens) / mean((m) => m.stepMs)) * 1000,
        peakTensorMB: peakBytes / 2 ** 20,
      };
    },
  };
}

const selection = await selectBackend(process.argv[2] ?? "wasm", () => {});
const { backend } = selection;
// Which matrix kernels ran (native OpenBLAS or the backend's own; VACCINE_NATIVE_KERNELS=off for the latter).
const kernels = selection.nativeKernels ? (selection.nativeKernels.active ? "native" : "stock") : backend;
const results: Record<string, unknown> = {};
for (const [name, shape] of Object.entries(shapes)) {
  const runs = [runner(shape, () => new SftStep()), runner(shape, () => new VaccineStep(2)), runner(shape, () => new VaccineStep(2, 10))];
  // Step i of each method in turn, starting with a different method each round.
  for (let i = 0; i < STEPS; i++) for (let j = 0; j < runs.length; j++) await runs[(i + j) % runs.length].step();
  const [sft, vaccine, accelerated] = runs.map((r) => r.finish());
  // Per round: the methods' steps of one round ran under about the same load.
  const perRound = (of: typeof vaccine) => median(of.stepMsAll.map((ms, i) => ms / sft.stepMsAll[i]));
  results[name] = {
    config: shape,
    sft,
    vaccine,
    acceleratedTau10: accelerated,
    ratio: vaccine.stepMs / sft.stepMs,
    acceleratedRatio: accelerated.stepMs / sft.stepMs,
    ratioMedianOfRounds: perRound(vaccine),
    pass1Share: vaccine.perturbationMs / vaccine.stepMs,
  };
  console.log(name, JSON.stringify(results[name]));
}
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/vaccine-step.json",
  JSON.stringify({ backend, kernels, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version }, batch: BATCH, steps: STEPS - WARMUP, results }, null, 2) + "\n",
);
