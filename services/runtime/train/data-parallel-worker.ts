/**
 * Entry of one data-parallel training thread (data-parallel.ts): its own tfjs runtime, copy of
 * the model, optimizer and step function, run on its shard of each batch. The update adds the
 * shard gradients of all threads (shared-sum.ts) before the same checks, clipping and AdamW
 * update as the training loop's, so every thread's weights stay the same.
 */
import { parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../backend.ts";
import { LlamaModel } from "../model/llama.ts";
import { LoraAdapter, loraWeightName } from "../model/lora.ts";
import { loadBlasAddon } from "../native/blas-addon.ts";
import { lowerThreadPriority } from "../thread-priority.ts";
import { AdamW, clipCoefficient } from "./adamw.ts";
import type { FromWorker, ToWorker, WorkerError, WorkerInit } from "./data-parallel.ts";
import { disposeBatch, toTensors, TrainingDivergedError } from "./loop.ts";
import { SharedSum } from "./shared-sum.ts";
import { SftStep, type PhaseName, type StepFunction } from "./step.ts";
import { VaccineStep } from "./vaccine-step.ts";

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
  const m = init.method;
  const stepFn: StepFunction = m.name === "sft" ? new SftStep() : new VaccineStep(m.rho, m.refreshEvery);
  return { model, lora, params, optimizer, stepFn, shared: new SharedSum(init.sum, init.rank) };
}

type Setup = Awaited<ReturnType<typeof setUp>>;

function step(s: Setup, m: Extract<ToWorker, { t: "step" }>) {
  const { model, lora, params, optimizer, stepFn, shared } = s;
  const batch = toTensors(m.shard);
  const [wholeTokens] = shared.sum([batch.tokens]);
  batch.shareOfBatch = wholeTokens > 0 ? batch.tokens / wholeTokens : 0;
  // The loop's seed on every thread, and each its rows of the whole batch's masks: one thread's dropout.
  lora?.reseedDropout(m.dropoutSeed);
  if (lora) lora.dropoutWindow = m.rows;
  // The shared sum's layout: every gradient in parameter order, then the loss.
  const lossAt = [...params.values()].reduce((n, p) => n + p.size, 0);
  let loss = Number.NaN;
  const update = (shardLoss: number, grads: Map<string, tf.Tensor>): number => {
    let summed: tf.Tensor[] = [];
    try {
      const flat = new Float32Array(lossAt + 1);
      let offset = 0;
      for (const [name, p] of params) {
        const g = grads.get(name);
        if (!g) throw new Error(`data-parallel: no gradient for ${name} (a step that freezes parameters is not supported)`);
        flat.set(g.dataSync() as Float32Array, offset);
        offset += p.size;
      }
      flat[lossAt] = shardLoss;
      const sums = shared.sum(flat);
      loss = sums[lossAt];
      if (!Number.isFinite(loss)) throw new TrainingDivergedError(m.step + 1, loss);
      offset = 0;
      const whole = new Map<string, tf.Tensor>();
      for (const [name, p] of params) {
        whole.set(name, tf.tensor(sums.subarray(offset, offset + p.size), p.shape));
        offset += p.size;
      }
      summed = [...whole.values()];
      const { norm, scale } = clipCoefficient(whole, m.gradClip);
      if (!Number.isFinite(norm)) throw new TrainingDivergedError(m.step + 1, norm);
      optimizer.apply(whole, m.learningRate, scale);
      return norm;
    } finally {
      for (const g of grads.values()) g.dispose();
      tf.dispose(summed);
    }
  };
  const timings: Partial<Record<PhaseName, number>> = {};
  const phase = <T>(name: PhaseName, fn: () => T): T => {
    const t0 = performance.now();
    try {
      return fn();
    } finally {
      timings[name] = (timings[name] ?? 0) + performance.now() - t0;
    }
  };
  try {
    const shard = { ...m.rows, sum: (values: ArrayLike<number>) => shared.sum(values) };
    const out = stepFn.run({ model, lora, params, batch, step: m.step, phase, update, shard });
    return { loss, gradNorm: out.gradNorm, perturbationNorm: out.perturbationNorm, perturbationMs: timings.perturbation ?? 0, updateMs: timings.update ?? 0 };
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
