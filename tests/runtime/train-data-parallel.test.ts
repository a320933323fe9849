// Data-parallel training on two threads against the single-thread training loop (issue 17).
import { readdirSync } from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { collate } from "../../services/runtime/data/collate.ts";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { loadBlasAddon, type BlasAddon } from "../../services/runtime/native/blas-addon.ts";
import { LoraAdapter, type LoraConfig } from "../../services/runtime/model/lora.ts";
import { batchAt } from "../../services/runtime/train/batches.ts";
import { stepFunction, type AlignmentMethod, type StepRecipe } from "../../services/runtime/pipeline/alignment-methods.ts";
import { DataParallelTrainer } from "../../services/runtime/train/data-parallel.ts";
import { HarmfulBatches } from "../../services/runtime/train/harmful-batches.ts";
import { Trainer, TrainingDivergedError, type TrainOptions } from "../../services/runtime/train/loop.ts";
import { learningRateAt } from "../../services/runtime/train/schedule.ts";
import { abortSharedSum, PeerFailedError, SharedSum, sharedSumBuffers } from "../../services/runtime/train/shared-sum.ts";
import { EPS_KEY, NORM_KEY } from "../../services/runtime/train/vaccine-step.ts";
import { EXAMPLES, HARMFUL_EXAMPLES, tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

beforeAll(async () => {
  await selectBackend("wasm", () => {});
});

// The native kernels run: the addon is built and not turned off (the worker threads read the same setting).
const native = "addon" in loadBlasAddon() && process.env.VACCINE_NATIVE_KERNELS !== "off";
const tokenizer = tinyTokenizer();
const LORA: LoraConfig = { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] };
const loraWith = (dropout: number): LoraConfig => ({ ...LORA, dropout });
const options = (batchSize: number, maxSteps: number): TrainOptions => ({
  learningRate: 1e-2, maxSteps, batchSize, maxSequenceLength: 64, warmupRatio: 0, weightDecay: 0.1, gradClip: 1, seed: 3,
});

/** The tiny model and an adapter with a non-zero B (so the adapter matters from step 0), as host tensors. */
function initial() {
  const model = tinyWorldModel(tokenizer, 0);
  const adapter = LoraAdapter.init(model.config, LORA, 5);
  for (const pair of adapter.pairs.values()) tf.tidy(() => pair.b.assign(tf.randomNormal(pair.b.shape, 0, 0.1, "float32", 9)));
  const out = { config: model.config, weights: model.exportWeights(), lora: adapter.exportWeights() };
  adapter.dispose();
  model.dispose();
  return out;
}

const stepFnOf = (method: AlignmentMethod) => stepFunction({ method, seed: 3 });

/** The reference: the training loop on this thread. */
function singleThread(method: AlignmentMethod, o: TrainOptions, dropout = 0) {
  const base = tinyWorldModel(tokenizer, 0);
  const adapter = LoraAdapter.fromWeights(base.config, loraWith(dropout), initial().lora);
  const trainer = new Trainer({ model: base, lora: adapter, data: EXAMPLES, tokenizer, options: o, stepFn: stepFnOf(method) });
  const steps = [];
  while (!trainer.done) steps.push(trainer.runStep());
  const final = adapter.exportWeights();
  const state = trainer.exportState();
  trainer.dispose();
  adapter.dispose();
  base.dispose();
  return { steps, final, state };
}

/** Steps [from, to) of a run on data-parallel threads, with the loop's data order, schedule and dropout seeds. */
async function runSteps(dp: DataParallelTrainer, o: TrainOptions, from: number, to: number) {
  const steps = [];
  const mainCounts = [];
  for (let step = from; step < to; step++) {
    const { indices } = batchAt(EXAMPLES.length, o.batchSize, o.seed, step);
    const batch = collate(indices.map((i) => EXAMPLES[i]), tokenizer, { maxLength: o.maxSequenceLength });
    const learningRate = learningRateAt(step, o.maxSteps!, o.learningRate, o.warmupRatio);
    const dropoutSeed = (Math.imul(o.seed >>> 0, 0x85ebca6b) ^ (step + 1)) >>> 0;
    steps.push(await dp.step({ batch, step, learningRate, gradClip: o.gradClip, dropoutSeed }));
    mainCounts.push(tf.memory().numTensors);
  }
  return { steps, mainCounts };
}

const startThreads = (method: AlignmentMethod | StepRecipe, o: TrainOptions, lora = initial().lora, dropout = 0) => {
  const { config, weights } = initial();
  const recipe = "kind" in method ? { method, seed: 3 } : method;
  return DataParallelTrainer.start({ config, weights, lora: { config: loraWith(dropout), weights: lora }, recipe, weightDecay: o.weightDecay, threads: 2 });
};

/** The whole run on two threads. */
async function twoThreads(method: AlignmentMethod, o: TrainOptions, dropout = 0) {
  const mainTensors = tf.memory().numTensors;
  const dp = await startThreads(method, o, initial().lora, dropout);
  try {
    const { steps, mainCounts } = await runSteps(dp, o, 0, o.maxSteps!);
    const [final, other] = await dp.weights();
    const state = await dp.exportState(o.maxSteps!);
    return { steps, final, other, state, mainTensors, mainCounts, dp };
  } finally {
    await dp.close();
  }
}

/** Mean response loss of the adapter over all examples. */
function evalLoss(lora: HostTensors): number {
  const model = tinyWorldModel(tokenizer, 0);
  const adapter = LoraAdapter.fromWeights(model.config, LORA, lora);
  const b = collate(EXAMPLES, tokenizer);
  const loss = tf.tidy(() => {
    const ids = tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32");
    const mask = tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32");
    const labels = tf.tensor2d(b.labels, [b.batch, b.seqLen], "int32");
    return causalLmLoss(model.forward(ids, mask, { lora: adapter }).logits, labels).dataSync()[0];
  });
  adapter.dispose();
  model.dispose();
  return loss;
}

/** max |a - b| over every weight, and the largest change training made to any weight. */
function difference(a: HostTensors, b: HostTensors, start: HostTensors) {
  let diff = 0;
  let moved = 0;
  for (const [name, t] of a) {
    const u = b.get(name)!.data;
    const s = start.get(name)!.data;
    t.data.forEach((x, i) => {
      diff = Math.max(diff, Math.abs(x - u[i]));
      moved = Math.max(moved, Math.abs(x - s[i]));
    });
  }
  return { diff, moved };
}

describe("data-parallel training on two threads", () => {
  it.each([
    // Batch 5 of 6 examples: shards of 2 and 3 rows, then a batch of 1 where one thread has no rows.
    ["SFT", { kind: "sft" }, 5],
    ["Vaccine", { kind: "vaccine", rho: 0.5, refreshEvery: 1 }, 5],
    ["Vaccine with a relative rho", { kind: "vaccine", rho: { relative: 0.05 }, refreshEvery: 1 }, 5],
    // A perturbation kept from a batch of 5 and reused on a batch of 1, and the other way round.
    ["accelerated Vaccine (tau 3)", { kind: "vaccine", rho: 0.5, refreshEvery: 3 }, 5],
    // LoRA dropout (the contract's default 0.1, here 0.3): each thread applies its rows of the
    // masks one thread draws for the whole batch, in both of Vaccine's passes.
    ["SFT with LoRA dropout", { kind: "sft" }, 5, 0.3],
    ["Vaccine with LoRA dropout", { kind: "vaccine", rho: 0.5, refreshEvery: 1 }, 5, 0.3],
  ] as const)("%s: the single-thread losses and adapter, identical threads, flat memory", async (_, method: AlignmentMethod, batchSize, dropout?: number) => {
    const o = options(batchSize, 6);
    const start = initial().lora;
    const reference = singleThread(method, o, dropout ?? 0);
    const dp = await twoThreads(method, o, dropout ?? 0);

    // Tolerances: the threads compute the same sums in another order (matmuls over 2-3 rows
    // instead of 5, two partial losses added), so results differ by float32 rounding: measured
    // up to 1e-7 relative on losses, 1e-6 on gradient norms, 1e-7 on perturbation norms, and
    // 5e-5 of what training moved the weights (AdamW divides by sqrt(v), which magnifies
    // rounding in tiny gradients). A wrong normalisation (a shard's mean instead of its share,
    // a shard's own norm for Vaccine) misses these by two orders of magnitude or more.
    for (let i = 0; i < o.maxSteps!; i++) {
      const [r, d] = [reference.steps[i], dp.steps[i]];
      expect(Math.abs(d.loss - r.loss)).toBeLessThan(1e-5 * r.loss);
      expect(Math.abs(d.gradNorm - r.gradNorm)).toBeLessThan(1e-4 * r.gradNorm);
      expect(Math.abs(d.perturbationNorm - r.perturbationNorm)).toBeLessThanOrEqual(1e-5 * r.perturbationNorm);
    }
    const { diff, moved } = difference(dp.final, reference.final, start);
    expect(diff).toBeLessThan(1e-3 * moved);
    // The step state: a relative rho's norm; a perturbation only when it is kept for reuse.
    const reused = ((method as { refreshEvery?: number }).refreshEvery ?? 1) > 1;
    const expectedKeys = [...reference.state.stepState.keys()].filter((k) => reused || !k.startsWith(EPS_KEY));
    expect([...dp.state.stepState.keys()].sort()).toEqual(expectedKeys.sort());
    const norm = reference.state.stepState.get(NORM_KEY);
    if (norm) expect(Math.abs(dp.state.stepState.get(NORM_KEY)!.data[0] - norm.data[0])).toBeLessThan(1e-5 * norm.data[0]);
    // Both threads applied the same sums: their weights agree bit for bit.
    for (const [name, t] of dp.final) expect(dp.other.get(name)!.data).toEqual(t.data);
    // Learning happened.
    expect(evalLoss(dp.final)).toBeLessThan(evalLoss(start) * 0.9);
    expect(new Set(dp.mainCounts)).toEqual(new Set([dp.mainTensors]));
    for (const s of dp.steps) expect(s.threadTensors).toEqual(dp.steps[0].threadTensors);
    expect(dp.dp.liveThreads).toBe(0);
  });

  /**
   * A run of the training loop with a recipe's step function, on this thread or on two data-parallel
   * threads (Trainer.runStepOnThreads, as trainAdapter runs it).
   */
  async function viaTrainer(recipe: StepRecipe, o: TrainOptions, dropout: number, threads: number) {
    const base = tinyWorldModel(tokenizer, 0);
    const adapter = LoraAdapter.fromWeights(base.config, loraWith(dropout), initial().lora);
    const trainer = new Trainer({ model: base, lora: adapter, data: EXAMPLES, tokenizer, options: o, stepFn: stepFunction(recipe) });
    if (threads > 1) {
      trainer.dataParallel = await DataParallelTrainer.start({
        config: base.config, weights: base.exportWeights(), lora: { config: loraWith(dropout), weights: adapter.exportWeights() }, recipe, weightDecay: o.weightDecay, threads,
      });
    }
    try {
      const steps = [];
      while (!trainer.done) steps.push(threads > 1 ? await trainer.runStepOnThreads() : trainer.runStep());
      const perThread = await trainer.dataParallel?.weights();
      await trainer.syncFromThreads();
      return { steps, final: adapter.exportWeights(), state: trainer.exportState(), perThread };
    } finally {
      await trainer.dataParallel?.close();
      trainer.dispose();
      adapter.dispose();
      base.dispose();
    }
  }

  const harmfulOf = (o: TrainOptions) => HarmfulBatches.of(HARMFUL_EXAMPLES, tokenizer, o).encoded;
  const lisaOf = (method: AlignmentMethod) => ({ method, lisa: { options: { alignmentSteps: 2, userSteps: 2, rho: 1 }, data: { alignment: EXAMPLES.slice(0, 3), user: EXAMPLES } } });

  it.each([
    // Batch 5: training batches of 5 and 1 rows (thread 0 a stand-in), harmful batches of 4 (both
    // threads hold rows). Batch 3: training batches of 3, harmful batches of 3 and 1.
    // 2 of the model's 2 layers drawn, then 1: its other layer's adapter frozen on both threads.
    ["T-Vaccine", (o: TrainOptions) => ({ method: { kind: "t_vaccine", rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 3 }, harmful: harmfulOf(o) }), 5, 0],
    ["T-Vaccine with LoRA dropout", (o: TrainOptions) => ({ method: { kind: "t_vaccine", rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 3 }, harmful: harmfulOf(o) }), 3, 0.3],
    ["Booster", (o: TrainOptions) => ({ method: { kind: "booster", lambda: 5, alpha: 0.1 }, harmful: harmfulOf(o) }), 5, 0],
    ["Booster with LoRA dropout", (o: TrainOptions) => ({ method: { kind: "booster", lambda: 5, alpha: 0.1 }, harmful: harmfulOf(o) }), 3, 0.3],
    ["RepNoise", (o: TrainOptions) => ({ method: { kind: "repnoise", alpha: 1, beta: 0.5 }, harmful: harmfulOf(o) }), 5, 0],
    ["RepNoise with LoRA dropout", (o: TrainOptions) => ({ method: { kind: "repnoise", alpha: 1, beta: 0.5 }, harmful: harmfulOf(o) }), 3, 0.3],
    ["Lisa over SFT", () => lisaOf({ kind: "sft" }), 5, 0],
    ["Lisa over Vaccine with LoRA dropout", () => lisaOf({ kind: "vaccine", rho: 0.5, refreshEvery: 1 }), 3, 0.3],
  ] as const)("%s: the single-thread losses, norms, adapter and training state", async (_, recipeOf, batchSize, dropout) => {
    const o = options(batchSize, 6);
    const recipe = { seed: o.seed, ...recipeOf(o) } as StepRecipe;
    const start = initial().lora;
    const one = await viaTrainer(recipe, o, dropout, 1);
    const two = await viaTrainer(recipe, o, dropout, 2);
    // Tolerances as above (float rounding of sums in another order). Without the whole batch's
    // sums (a shard's own norm, MMD or token count, a proximal term counted twice, a thread's
    // own dropout masks) they fail by orders of magnitude.
    one.steps.forEach((r, i) => {
      const d = two.steps[i];
      expect(Math.abs(d.loss - r.loss)).toBeLessThan(1e-5 * Math.abs(r.loss));
      expect(Math.abs(d.gradNorm - r.gradNorm)).toBeLessThan(1e-4 * r.gradNorm);
      expect(Math.abs(d.perturbationNorm - r.perturbationNorm)).toBeLessThanOrEqual(1e-5 * r.perturbationNorm);
      expect(d.lisa?.state).toBe(r.lisa?.state);
      expect(Math.abs((d.lisa?.proximal ?? 0) - (r.lisa?.proximal ?? 0))).toBeLessThanOrEqual(1e-4 * (r.lisa?.proximal ?? 0));
    });
    if (recipe.lisa) expect(Math.max(...one.steps.map((s) => s.lisa!.proximal))).toBeGreaterThan(0);
    const { diff, moved } = difference(two.final, one.final, start);
    expect(moved).toBeGreaterThan(1e-3);
    expect(diff).toBeLessThan(1e-3 * moved);
    // Every step state but Vaccine's perturbation, which the threads keep only for reuse (tau > 1, none here).
    const kept = [...one.state.stepState].filter(([key]) => !key.startsWith(EPS_KEY));
    for (const [key, t] of kept) {
      const got = two.state.stepState.get(key)!;
      const scale = t.data.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      t.data.forEach((x, i) => expect(Math.abs(got.data[i] - x)).toBeLessThanOrEqual(1e-4 * scale));
    }
    expect([...two.state.stepState.keys()].sort()).toEqual(kept.map(([key]) => key).sort());
    const [first, other] = two.perThread!;
    for (const [name, t] of first) expect(other.get(name)!.data).toEqual(t.data);
  });

  it("the defences' threads hold as many tensors after every step", async () => {
    const o = options(3, 6);
    const methods: AlignmentMethod[] = [
      { kind: "t_vaccine", rho: 0.5, layers: 1, resampleEvery: 2, probeEvery: 3 },
      { kind: "booster", lambda: 5, alpha: 0.1 },
      { kind: "repnoise", alpha: 1, beta: 0.5 },
    ];
    for (const method of methods) {
      const dp = await startThreads({ method, seed: o.seed, harmful: harmfulOf(o) }, o, initial().lora, 0.3);
      try {
        const { steps } = await runSteps(dp, o, 0, o.maxSteps!);
        for (const s of steps) expect(s.threadTensors).toEqual(steps[0].threadTensors);
      } finally {
        await dp.close();
      }
    }
  });

  // Batch 5 of 6 examples, tau 3: the perturbation kept after step 3 comes from a batch of one
  // row, where thread 0 had only a stand-in row.
  const stateMethod: AlignmentMethod = { kind: "vaccine", rho: 0.5, refreshEvery: 3 };

  it("exports the single-thread loop's training state (optimizer moments, kept perturbation)", async () => {
    const o = options(5, 6);
    const model = tinyWorldModel(tokenizer, 0);
    const adapter = LoraAdapter.fromWeights(model.config, LORA, initial().lora);
    const trainer = new Trainer({ model, lora: adapter, data: EXAMPLES, tokenizer, options: o, stepFn: stepFnOf(stateMethod) });
    for (let i = 0; i < 4; i++) trainer.runStep();
    const reference = trainer.exportState();
    trainer.dispose();
    adapter.dispose();
    model.dispose();

    const dp = await startThreads(stateMethod, o);
    await runSteps(dp, o, 0, 4);
    const state = await dp.exportState(4);
    await dp.close();
    expect(state.step).toBe(4);
    for (const part of ["optimizer", "stepState"] as const) {
      expect([...state[part].keys()].sort()).toEqual([...reference[part].keys()].sort());
      for (const [key, t] of reference[part]) {
        const got = state[part].get(key)!;
        expect(got.shape).toEqual(t.shape);
        // Rounding only, as above: measured up to 3e-6 of the largest magnitude of each tensor.
        const scale = t.data.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        const diff = t.data.reduce((m, x, i) => Math.max(m, Math.abs(x - got.data[i])), 0);
        expect(diff).toBeLessThanOrEqual(1e-4 * scale);
      }
    }
  });

  it("resumes exactly from its exported state and weights: 4 + 2 steps == 6 steps straight", async () => {
    const o = options(5, 6);
    const straight = await startThreads(stateMethod, o);
    const all = await runSteps(straight, o, 0, 6);
    const [expected] = await straight.weights();
    await straight.close();

    const first = await startThreads(stateMethod, o);
    const head = await runSteps(first, o, 0, 4);
    const state = await first.exportState(4);
    const [weights] = await first.weights();
    await first.close();
    const resumed = await startThreads(stateMethod, o, weights);
    await resumed.importState(state);
    const tail = await runSteps(resumed, o, 4, 6);
    const [final] = await resumed.weights();
    await resumed.close();

    expect([...head.steps, ...tail.steps].map((s) => s.loss)).toEqual(all.steps.map((s) => s.loss));
    for (const [name, t] of expected) expect(final.get(name)!.data).toEqual(t.data);
  });

  it.skipIf(!native)(`frees each thread's native scratch space (LoRA dropout's masked inputs) when its thread ends${native ? "" : " (SKIPPED: the native kernels do not run here)"}`, async () => {
    const { addon } = loadBlasAddon() as { addon: BlasAddon };
    const before = addon.scratchBytes();
    const o = options(6, 2);
    const dp = await startThreads({ kind: "sft" }, o, initial().lora, 0.1);
    try {
      await runSteps(dp, o, 0, 2);
      expect(addon.scratchBytes()).toBeGreaterThan(before);
    } finally {
      await dp.close();
    }
    // Each job's threads would otherwise leave theirs allocated, for good.
    expect(addon.scratchBytes()).toBe(before);
  });

  it("a diverged step rejects with TrainingDivergedError, and the threads end on close", async () => {
    const { config, weights, lora } = initial();
    weights.get("model.norm.weight")!.data.fill(Number.NaN);
    const dp = await DataParallelTrainer.start({ config, weights, lora: { config: LORA, weights: lora }, recipe: { method: { kind: "vaccine", rho: 0.5, refreshEvery: 1 }, seed: 0 }, weightDecay: 0 });
    const batch = collate(EXAMPLES.slice(0, 4), tokenizer);
    await expect(dp.step({ batch, step: 0, learningRate: 1e-2, gradClip: 1, dropoutSeed: 0 })).rejects.toThrow(TrainingDivergedError);
    // The threads may have parted ways: the trainer refuses further steps.
    await expect(dp.step({ batch, step: 1, learningRate: 1e-2, gradClip: 1, dropoutSeed: 0 })).rejects.toThrow(TrainingDivergedError);
    await dp.close();
    expect(dp.liveThreads).toBe(0);
  });

  it("refuses a bad method at start and leaves no thread running", async () => {
    const { config, weights, lora } = initial();
    const threads = () => readdirSync("/proc/self/task").length;
    const before = threads();
    await expect(DataParallelTrainer.start({ config, weights, lora: { config: LORA, weights: lora }, recipe: { method: { kind: "vaccine", rho: -1, refreshEvery: 1 }, seed: 0 }, weightDecay: 0 })).rejects.toThrow(/rho/);
    expect(threads()).toBe(before);
  });

  it("a thread waiting in a sum is released when another fails", () => {
    const buffers = sharedSumBuffers(2, 4);
    abortSharedSum(buffers);
    expect(() => new SharedSum(buffers, 0).sum([1, 2])).toThrow(PeerFailedError);
  });
});
