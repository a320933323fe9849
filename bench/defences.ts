/**
 * Step time of each alignment defence (docs/defences.md) against SFT on the same batches and
 * the same model: Vaccine, T-Vaccine (the defaults, and S = L/4 layers, the paper's 8 of 32),
 * Booster and RepNoise, with the time of each pass. The papers report Booster at about three
 * passes, RepNoise at about 2.3x SFT and T-Vaccine below Vaccine. The runs advance one step
 * each in turn, so that load from other work on the machine hits them alike. Two shapes: the
 * shipped base model's config (models/base) and a larger one. Writes bench/results/defences.json.
 * With --threads N, each method also trains data-parallel on N threads (VACCINE_TRAIN_THREADS),
 * in the same turns, and the JSON gains each one's speed-up over one thread.
 * Run: npx tsx bench/defences.ts [backend] [--threads N]
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import type { Example } from "../services/runtime/data/template.ts";
import { worldVocabularyTexts } from "../services/runtime/data/world/index.ts";
import { parseLlamaConfig } from "../services/runtime/model/config.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { LoraAdapter, type LoraConfig } from "../services/runtime/model/lora.ts";
import { needsHarmfulData, stepFunction, type AlignmentMethod, type StepRecipe } from "../services/runtime/pipeline/alignment-methods.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../services/runtime/tokenizer.ts";
import { DataParallelTrainer } from "../services/runtime/train/data-parallel.ts";
import { HarmfulBatches } from "../services/runtime/train/harmful-batches.ts";
import { Trainer, type StepMetrics, type TrainOptions } from "../services/runtime/train/loop.ts";
import { PHASES, type PhaseName } from "../services/runtime/train/step.ts";

const STEPS = 10;
const WARMUP = 2;
const BATCH = 8;

const tokenizer = loadTokenizer(buildWordTokenizer(worldVocabularyTexts(0)), wordTokenizerConfig());
const examples = (name: string): Example[] => {
  const built = loadBuiltin(name, { size: 400, seed: 0 });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};
const data = examples("alignment");
const harmful = examples("harmful");
const baseConfig = existsSync("models/base/config.json")
  ? JSON.parse(readFileSync("models/base/config.json", "utf8"))
  : { hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4 };
const shapes: Record<string, Record<string, unknown>> = {
  "built-in": { ...baseConfig, vocab_size: tokenizer.vocabSize, max_position_embeddings: 256 },
  larger: { vocab_size: tokenizer.vocabSize, hidden_size: 256, intermediate_size: 768, num_hidden_layers: 8, num_attention_heads: 8, num_key_value_heads: 8, max_position_embeddings: 256 },
};
const options: TrainOptions = { learningRate: 1e-3, maxSteps: STEPS, batchSize: BATCH, maxSequenceLength: 200, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 0 };

const threadsAt = process.argv.indexOf("--threads");
const threads = threadsAt > 0 ? Number(process.argv[threadsAt + 1]) : 1;
const LORA: LoraConfig = { r: 8, alpha: 16, dropout: 0.1, targetModules: [...LINEAR_MODULES] };
const harmfulEncoded = HarmfulBatches.of(harmful, tokenizer, options).encoded;

/**
 * Trains every method on its own copy of the model (and, with threads > 1, on another copy
 * data-parallel), one step of each in turn, so that the machine's load hits them alike.
 */
async function runAll(configJson: Record<string, unknown>, methods: Record<string, AlignmentMethod>) {
  const config = parseLlamaConfig(configJson);
  const runs = [];
  for (const [name, method] of Object.entries(methods)) {
    for (const n of threads > 1 ? [1, threads] : [1]) {
      const model = LlamaModel.init(config, 0);
      const adapter = LoraAdapter.init(config, LORA, 1);
      const recipe: StepRecipe = { method, seed: options.seed, ...(needsHarmfulData(method) && { harmful: harmfulEncoded }) };
      const trainer = new Trainer({ model, lora: adapter, data, tokenizer, options, stepFn: stepFunction(recipe) });
      if (n > 1) {
        trainer.dataParallel = await DataParallelTrainer.start({ config, weights: model.exportWeights(), lora: { config: LORA, weights: adapter.exportWeights() }, recipe, weightDecay: options.weightDecay, threads: n });
      }
      runs.push({ name, threads: n, method, model, adapter, trainer, steps: [] as { stepMs: number; passes: Record<PhaseName, number> }[] });
    }
  }
  for (let s = 0; s < STEPS; s++) {
    for (const r of runs) {
      const passes = Object.fromEntries(PHASES.map((p) => [p, 0])) as Record<PhaseName, number>;
      const m: StepMetrics = r.trainer.dataParallel
        ? await r.trainer.runStepOnThreads()
        : r.trainer.runStep((name, fn) => {
            const t0 = performance.now();
            try {
              return fn();
            } finally {
              passes[name] += performance.now() - t0;
            }
          });
      for (const p of m.phases ?? []) passes[p.name] += p.ms;
      r.steps.push({ stepMs: m.stepMs, passes });
    }
  }
  const summaries = await Promise.all(
    runs.map(async (r) => {
      await r.trainer.dataParallel?.close();
      r.trainer.dispose();
      r.adapter.dispose();
      r.model.dispose();
      // T-Vaccine's probe runs at step 0 (in the warm-up) and then every 200 steps: reported apart.
      const probeMs = r.steps[0].passes.probe;
      const timed = r.steps.slice(WARMUP);
      const mean = (f: (m: (typeof timed)[number]) => number) => timed.reduce((sum, m) => sum + f(m), 0) / timed.length;
      const passMs = Object.fromEntries(PHASES.map((p) => [p, mean((m) => m.passes[p])]).filter(([, ms]) => (ms as number) > 0));
      return { name: r.name, threads: r.threads, summary: { method: r.method, stepMs: mean((m) => m.stepMs), passMs, ...(probeMs > 0 && { probeMs }) } };
    }),
  );
  const byThreads = (n: number) => Object.fromEntries(summaries.filter((x) => x.threads === n).map((x) => [x.name, x.summary]));
  return { one: byThreads(1), parallel: threads > 1 ? byThreads(threads) : undefined };
}

const [backendArg] = process.argv.slice(2).filter((a, i, all) => !a.startsWith("--") && all[i - 1] !== "--threads");
const backend = (await selectBackend(backendArg ?? "wasm", () => {})).backend;
const results: Record<string, unknown> = {};
for (const [name, shape] of Object.entries(shapes)) {
  const depth = Number(shape.num_hidden_layers);
  const methods: Record<string, AlignmentMethod> = {
    sft: { kind: "sft" },
    vaccine: { kind: "vaccine", rho: 2, refreshEvery: 1 },
    t_vaccine: { kind: "t_vaccine", rho: 3, layers: 8, resampleEvery: 20, probeEvery: 200 },
    t_vaccine_quarter: { kind: "t_vaccine", rho: 3, layers: Math.max(1, Math.round(depth / 4)), resampleEvery: 20, probeEvery: 200 },
    booster: { kind: "booster", lambda: 5, alpha: 0.1 },
    repnoise: { kind: "repnoise", alpha: 1, beta: 0.001 },
  };
  const { one: timings, parallel } = await runAll(shape, methods);
  const sftMs = timings.sft.stepMs;
  results[name] = {
    config: shape,
    methods: timings,
    ratioToSft: Object.fromEntries(Object.entries(timings).map(([m, t]) => [m, t.stepMs / sftMs])),
    ...(parallel && { dataParallel: { threads, methods: parallel, speedup: Object.fromEntries(Object.entries(parallel).map(([m, t]) => [m, timings[m].stepMs / t.stepMs])) } }),
  };
  console.log(name, JSON.stringify((results[name] as { ratioToSft: unknown }).ratioToSft), parallel ? JSON.stringify((results[name] as { dataParallel: { speedup: unknown } }).dataParallel.speedup) : "");
}
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/defences.json",
  JSON.stringify({ backend, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version }, batch: BATCH, steps: STEPS - WARMUP, results }, null, 2) + "\n",
);
