/**
 * Step time of the fine-tuning guards against plain fine-tuning (SFT) on the same model,
 * data and batch size: Lisa (K1 = K2 = 6, so a run has both states) and safety mixing
 * (fraction 0.1: more examples, the same step). Lisa's alignment steps train on other
 * (longer) rows than SFT's, so a control runs the SFT step on Lisa's exact batch schedule:
 * Lisa against that control is the cost of the proximal term alone. The runs advance
 * together, one step of each in turn, so that load on the shared machine hits each alike.
 * Shape: the shipped base model's config. Writes bench/results/guards.json.
 * Run: npx tsx bench/guards.ts
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { safetyMix } from "../services/runtime/data/safety-mix.ts";
import type { Example } from "../services/runtime/data/template.ts";
import { worldVocabularyTexts } from "../services/runtime/data/world/index.ts";
import { parseLlamaConfig } from "../services/runtime/model/config.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { LoraAdapter } from "../services/runtime/model/lora.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../services/runtime/tokenizer.ts";
import { LisaStep } from "../services/runtime/train/lisa.ts";
import { Trainer, type StepMetrics } from "../services/runtime/train/loop.ts";
import { SftStep, type StepFunction } from "../services/runtime/train/step.ts";

const STEPS = 50;
const WARMUP = 2;
const BATCH = 8;
const LISA = { alignmentSteps: 6, userSteps: 6, rho: 1 };

const tokenizer = loadTokenizer(buildWordTokenizer(worldVocabularyTexts(0)), wordTokenizerConfig());
const examples = (name: string, size: number, harmfulRatio?: number): Example[] => {
  const built = loadBuiltin(name, { size, seed: 0, harmfulRatio });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};
const user = examples("sst2-mix", 400, 0.1);
const alignment = examples("alignment", 400);
const configJson = existsSync("models/base/config.json")
  ? { ...JSON.parse(readFileSync("models/base/config.json", "utf8")), vocab_size: tokenizer.vocabSize }
  : { vocab_size: tokenizer.vocabSize, hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4, max_position_embeddings: 256 };

function trainer(data: Example[], stepFn: StepFunction) {
  const config = parseLlamaConfig(configJson);
  const model = LlamaModel.init(config, 0);
  const lora = LoraAdapter.init(config, { r: 8, alpha: 1, dropout: 0.1, targetModules: [...LINEAR_MODULES] }, 1);
  const options = { learningRate: 1e-4, maxSteps: STEPS, batchSize: BATCH, maxSequenceLength: 200, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 0 };
  return { trainer: new Trainer({ model, lora, data, tokenizer, options, stepFn }), dispose: () => (lora.dispose(), model.dispose()) };
}

const backend = (await selectBackend(process.argv[2] ?? "wasm", () => {})).backend;
const schedule = new LisaStep(new SftStep(), LISA, { alignment: alignment, user: user });
const sftOnLisaBatches: StepFunction = { name: "sft", run: (input) => new SftStep().run(input), batchSource: (step) => schedule.batchSource(step) };
const runs = {
  sft: trainer(user, new SftStep()),
  sftOnLisaBatches: trainer(user, sftOnLisaBatches),
  lisa: trainer(user, new LisaStep(new SftStep(), LISA, { alignment: alignment, user: user })),
  safetyMix: trainer(safetyMix(user, alignment, 0.1, 0), new SftStep()),
};
const metrics: Record<string, StepMetrics[]> = Object.fromEntries(Object.keys(runs).map((k) => [k, []]));
for (let s = 0; s < STEPS; s++) for (const [name, r] of Object.entries(runs)) metrics[name].push(r.trainer.runStep());
for (const r of Object.values(runs)) (r.trainer.dispose(), r.dispose());

const mean = (ms: StepMetrics[], f: (m: StepMetrics) => number) => ms.reduce((s, m) => s + f(m), 0) / ms.length;
const timed = Object.fromEntries(Object.entries(metrics).map(([k, ms]) => [k, ms.slice(WARMUP)]));
const lisaIn = (state: string) => (m: StepMetrics) => m.lisa?.state === state;
const groups: Record<string, StepMetrics[]> = {
  ...timed,
  lisaAlignmentState: timed.lisa.filter(lisaIn("alignment")),
  lisaUserState: timed.lisa.filter(lisaIn("user")),
};
const sftMs = mean(timed.sft, (m) => m.stepMs);
const results = {
  ...Object.fromEntries(
    Object.entries(groups).map(([k, ms]) => {
      const stepMs = mean(ms, (m) => m.stepMs);
      return [k, { stepMs, tokensPerStep: mean(ms, (m) => m.tokens), ratioToSft: stepMs / sftMs }];
    }),
  ),
  // The same batches with and without the proximal term.
  proximalOverhead: mean(timed.lisa, (m) => m.stepMs) / mean(timed.sftOnLisaBatches, (m) => m.stepMs),
};
console.log(JSON.stringify(results, null, 2));
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/guards.json",
  JSON.stringify(
    { backend, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, loadavg: os.loadavg() }, batch: BATCH, steps: STEPS - WARMUP, lisa: LISA, safetyMixFraction: 0.1, results },
    null,
    2,
  ) + "\n",
);
