/**
 * Harmful-score generation on the shipped base model: 100 held-out harmful prompts
 * (harmful-eval, test split, seed 0), greedy, up to 128 new tokens, decoded one at a time
 * (batchSize 1) and in batches (model/generate.ts), in one process with the runs interleaved
 * so that load from other processes falls on both alike. Every run must give the same
 * tokens as the first one-by-one run; prompts/s and tokens/s are medians over the
 * repetitions, with the process's CPU time beside the wall time (the machine is shared).
 * Run: npx tsx bench/generate.ts   (REPS=3, BATCHES=8,16,32,64, VACCINE_BACKEND=wasm by default)
 * Writes bench/results/generate.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBaseModel } from "../services/runtime/base-model.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { DEFAULT_BATCH, generate } from "../services/runtime/model/generate.ts";
import { promptIds } from "../services/runtime/pipeline/answers.ts";

const PROMPTS = 100;
const MAX_NEW_TOKENS = 128;
const REPS = Number(process.env.REPS ?? 3);
const BATCHES = (process.env.BATCHES ?? `8,16,${DEFAULT_BATCH},64`).split(",").map(Number);

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r2 = (x: number) => Number(x.toFixed(2));

async function main(): Promise<void> {
  const selection = await selectBackend(process.env.VACCINE_BACKEND ?? "wasm", () => {});
  const { model, tokenizer } = await loadBaseModel();
  const data = loadBuiltin("harmful-eval", { split: "test", size: PROMPTS, seed: 0 });
  if (data.kind !== "examples") throw new Error("harmful-eval is instruction data");
  const prompts = data.examples.map((e) => promptIds({ tokenizer }, e));
  const opts = { maxNewTokens: MAX_NEW_TOKENS, eosTokenId: tokenizer.eosId ?? [] };
  generate(model, prompts.slice(0, 4), { ...opts, maxNewTokens: 8 }); // warm-up
  const loadBefore = os.loadavg();

  const modes = [1, ...BATCHES];
  const runs = new Map<number, { wallS: number; cpuS: number }[]>(modes.map((b) => [b, []]));
  let reference: number[][] | undefined;
  let mismatched = 0;
  for (let rep = 0; rep < REPS; rep++) {
    for (const batchSize of modes) {
      const w0 = performance.now();
      const c0 = cpuMs();
      const out = generate(model, prompts, { ...opts, batchSize });
      runs.get(batchSize)!.push({ wallS: (performance.now() - w0) / 1000, cpuS: (cpuMs() - c0) / 1000 });
      reference ??= out;
      mismatched += out.filter((o, i) => o.join() !== reference![i].join()).length;
      console.error(`rep ${rep} batch ${batchSize}: ${((performance.now() - w0) / 1000).toFixed(2)} s`);
    }
  }
  const tokens = reference!.reduce((n, o) => n + o.length, 0);
  const byMode = Object.fromEntries(
    modes.map((b) => {
      const wallS = median(runs.get(b)!.map((r) => r.wallS));
      const cpuS = median(runs.get(b)!.map((r) => r.cpuS));
      return [b === 1 ? "oneByOne" : `batch${b}`, { batchSize: b, wallS: r2(wallS), cpuS: r2(cpuS), promptsPerSecond: r2(PROMPTS / wallS), tokensPerSecond: Math.round(tokens / wallS), runsWallS: runs.get(b)!.map((r) => r2(r.wallS)) }];
    }),
  );
  const one = byMode.oneByOne;
  const batched = byMode[`batch${DEFAULT_BATCH}`];
  const result = {
    benchmark: "generate",
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, node: process.version, loadAverageBefore: loadBefore.map(r2), loadAverageAfter: os.loadavg().map(r2) },
    backend: selection.backend,
    nativeKernels: selection.nativeKernels ?? null,
    model: "builtin base (models/base)",
    prompts: PROMPTS,
    maxNewTokens: MAX_NEW_TOKENS,
    generatedTokens: tokens,
    repetitions: REPS,
    identicalTokens: mismatched === 0,
    mismatchedPrompts: mismatched,
    defaultBatch: DEFAULT_BATCH,
    speedup: { wall: r2(one.wallS / batched.wallS), cpu: r2(one.cpuS / batched.cpuS) },
    byMode,
  };
  console.log(JSON.stringify(result, null, 2));
  mkdirSync("bench/results", { recursive: true });
  writeFileSync("bench/results/generate.json", JSON.stringify(result, null, 2) + "\n");
  model.dispose();
}

await main();
