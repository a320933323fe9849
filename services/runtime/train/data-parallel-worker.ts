/**
 * Entry of one data-parallel training thread (data-parallel.ts): its own tfjs runtime, copy of
 * the model, optimizer and step function (made from the run's StepRecipe), run on its shard
 * of each batch. The update adds the
 * shard gradients of all threads (shared-sum.ts) before the same checks, clipping and AdamW
 * update as the training loop's, so every thread's weights stay the same.
 */
import { parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../backend.ts";
import { LlamaModel } from "../model/llama.ts";
import { LoraAdapter, loraWeightName } from "../model/lora.ts";
import { loadBlasAddon } from "../native/blas-addon.ts";
import { stepFunction } from "../pipeline/alignment-methods.ts";
import { lowerThreadPriority } from "../thread-priority.ts";
import { AdamW, clipCoefficient } from "./adamw.ts";
import type { FromWorker, ToWorker, WorkerError, WorkerInit } from "./data-parallel.ts";
import { disposeBatch, TrainingDivergedError } from "./loop.ts";
import { shardOf, sumOverShards, type Shard } from "./shard.ts";
import { SharedSum } from "./shared-sum.ts";
import type { PhaseName, PhaseTiming } from "./step.ts";

const init = workerData as WorkerInit;
// A job's training, as on its job thread (training-worker.ts): requests get a core first.
lowerThreadPriority();
const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);

async function setUp() {
  await selectBackend(init.backend, () => {}, { nativeKernels: init.nativeKernels });
  if (init.blasThreads !== undefined) {
    const loaded = loadBlasAddon();
    if ("addon" in loaded) loaded.addon.setThreads(init.blasThreads);
  }
  const model = LlamaModel.fromWeights(init.config, init.weights, { trainable: !init.lora });
  const lora = init.lora && LoraAdapter.fromWeights(init.config, init.lora.config, init.lora.weights);
  // Named and ordered as the training loop's parameters; the order is the shared sum's layout.
  const params = lora
    ? new Map([...lora.pairs].flatMap(([name, pair]) => [[loraWeightName(name, "A"), pair.a], [loraWeightName(name, "B"), pair.b]] as const))
    : new Map(model.weights);
  const optimizer = new AdamW(params, { weightDecay: init.weightDecay, decays: (n) => !n.endsWith("norm.weight") });
  const shared = new SharedSum(init.sum, init.rank);
  const shard: Shard = { rank: init.rank, shards: init.sum.threads, sum: (values) => shared.sum(values) };
  return { model, lora, params, optimizer, stepFn: stepFunction(init.recipe), shard };
}

type Setup = Awaited<ReturnType<typeof setUp>>;

function step(s: Setup, m: Extract<ToWorker, { t: "step" }>) {
  const { model, lora, params, optimizer, stepFn, shard } = s;
  const batch = shardOf(m.batch, shard);
  // The loop's seed on every thread, and each its rows of the whole batch's masks (TrainBatch.rows): one thread's dropout.
  lora?.reseedDropout(m.dropoutSeed);
  const update = (shardLoss: number, grads: Map<string, tf.Tensor>): number => {
    let summed: tf.Tensor[] = [];
    try {
      // In parameter order; a parameter the step froze (T-Vaccine) is frozen on every thread.
      const names = [...params.keys()].filter((name) => grads.has(name));
      const sums = sumOverShards(shard, names.map((name) => grads.get(name)!), [shardLoss]);
      summed = sums.tensors;
      const [loss] = sums.numbers;
      if (!Number.isFinite(loss)) throw new TrainingDivergedError(m.step + 1, loss);
      const whole = new Map(names.map((name, i) => [name, summed[i]]));
      const { norm, scale } = clipCoefficient(whole, m.gradClip);
      if (!Number.isFinite(norm)) throw new TrainingDivergedError(m.step + 1, norm);
      optimizer.apply(whole, m.learningRate, scale);
      return norm;
    } finally {
      for (const g of grads.values()) g.dispose();
      tf.dispose(summed);
    }
  };
  const started = performance.now();
  const phases: PhaseTiming[] = [];
  const phase = <T>(name: PhaseName, fn: () => T): T => {
    const t0 = performance.now();
    try {
      return fn();
    } finally {
      phases.push({ name, startMs: t0 - started, ms: performance.now() - t0 });
    }
  };
  try {
    const out = stepFn.run({ model, lora, params, batch, step: m.step, phase, update, shard });
    const msOf = (name: PhaseName) => phases.reduce((ms, p) => ms + (p.name === name ? p.ms : 0), 0);
    return { ...out, phases, perturbationMs: msOf("perturbation"), updateMs: msOf("update") };
  } finally {
    disposeBatch(batch);
  }
}

function toWorkerError(err: unknown): WorkerError {
  if (err instanceof TrainingDivergedError) return { name: "TrainingDivergedError", message: err.message, step: err.step, loss: err.loss };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: "Error", message: String(err) };
}

const ready = setUp();
ready.then(
  () => post({ t: "ready" }),
  (err) => post({ t: "failed", error: toWorkerError(err) }),
);
port.on("message", async (m: ToWorker) => {
  try {
    const s = await ready;
    if (m.t === "step") post({ t: "stepped", result: { ...step(s, m), numTensors: tf.memory().numTensors } });
    else if (m.t === "weights") post({ t: "weights", weights: s.lora ? s.lora.exportWeights() : s.model.exportWeights() });
    else if (m.t === "state") post({ t: "state", state: { step: m.step, optimizer: s.optimizer.exportState(), stepState: s.stepFn.exportState?.(m.step) ?? new Map() } });
    else {
      s.optimizer.importState(m.state.optimizer, m.state.step);
      s.stepFn.importState?.(m.state.stepState, m.state.step);
      post({ t: "imported" });
    }
  } catch (err) {
    post({ t: "failed", error: toWorkerError(err) });
  }
});
