/**
 * Alignment and user fine-tuning as one procedure: train a new LoRA adapter over a
 * checkpoint (a base model, or an aligned adapter merged into its base: "double LoRA")
 * with the step of its method (alignment-methods.ts), writing resumable training states on the way and a
 * PEFT adapter checkpoint that names its parent at the end.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Example } from "../data/template.ts";
import { LoraAdapter, type LoraConfig } from "../model/lora.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { DataParallelTrainer } from "../train/data-parallel.ts";
import { HarmfulBatches } from "../train/harmful-batches.ts";
import { Trainer, type StepMetrics, type TrainOptions } from "../train/loop.ts";
import type { PhaseRunner } from "../train/step.ts";
import { VaccineStep, type RhoCalibration } from "../train/vaccine-step.ts";
import { needsHarmfulData, stepFunction, type AlignmentMethod, type StepRecipe } from "./alignment-methods.ts";
import { applyGuard, type FineTuneGuard } from "./fine-tune-guards.ts";
import { KIND } from "./kinds.ts";
import { loadCheckpoint } from "./load.ts";
import { restoreTrainingState, saveTrainingState, writeAdapterFolder } from "./training-state.ts";
import { nextTurn } from "../next-turn.ts";

export type { AlignmentMethod } from "./alignment-methods.ts";

export interface AdapterTrainingSpec {
  /** What the adapter is trained over: a base model or an aligned checkpoint. */
  parent: CheckpointRef;
  data: Example[];
  method: AlignmentMethod;
  /** Harmful data of the methods that read it (T-Vaccine's probe, Booster, RepNoise; alignment-methods.ts). */
  harmful?: Example[];
  lora: LoraConfig;
  training: TrainOptions;
  /** A fine-tuning guard (Lisa, safety mixing); unset: plain training on `data`. */
  guard?: FineTuneGuard;
  /** Write a training state every this many steps (and when stopped early). */
  checkpointEvery: number;
  /** Extra lineage written into the result's manifest (e.g. the job id). */
  meta?: Record<string, unknown>;
}

export interface TrainingRunHooks {
  /** Stop after the current step, write a training state, resolve undefined. */
  signal?: AbortSignal;
  /** A training state of this same run to continue from. */
  resumeFrom?: CheckpointRef;
  /** Wraps each whole step (the job layer opens a span around it). */
  step?: (run: () => StepMetrics | Promise<StepMetrics>) => Promise<StepMetrics>;
  phase?: PhaseRunner;
  onStep?: (metrics: StepMetrics) => void;
  onCheckpoint?: (ref: CheckpointRef, kind: "training-state" | "result", step: number) => void;
  onLog?: (message: string) => void;
  /** Asked before each periodic training state: false skips that one, and the run goes on. */
  keepTrainingState?: (step: number) => Promise<boolean>;
}

/** Trains the adapter; resolves its checkpoint, or undefined when stopped by the signal. */
export async function trainAdapter(store: CheckpointStore, spec: AdapterTrainingSpec, hooks: TrainingRunHooks = {}): Promise<CheckpointRef | undefined> {
  const parent = await loadCheckpoint(store, spec.parent, { merged: true });
  // The harmful batches are tokenized with the parent's tokenizer, so the step comes after the load.
  const guarded = applyGuard(spec.guard, spec.data, spec.training.seed);
  const recipe: StepRecipe = {
    method: spec.method,
    seed: spec.training.seed,
    ...(spec.harmful && needsHarmfulData(spec.method) && { harmful: HarmfulBatches.of(spec.harmful, parent.tokenizer, spec.training).encoded }),
    ...(guarded.lisa && { lisa: guarded.lisa }),
  };
  const step = stepFunction(recipe);
  // A relative rho resolved on the first batch (restored on resume): logged once, kept in the result's manifest.
  const calibration = () => (step instanceof VaccineStep ? step.calibration : undefined);
  let calibrationLogged = false;
  const adapter = LoraAdapter.init(parent.model.config, spec.lora, spec.training.seed);
  const threads = trainThreads();
  const trainer = new Trainer({ model: parent.model, lora: adapter, data: guarded.data, tokenizer: parent.tokenizer, options: spec.training, stepFn: step });
  // Identifies the run: a training state resumes only the run that wrote it.
  const plan = { parent: spec.parent, method: spec.method, lora: spec.lora, training: spec.training, examples: spec.data.length, ...(spec.harmful && { harmfulExamples: spec.harmful.length }), ...(guarded.plan && { guard: guarded.plan }) };
  const checkpoint = async () => {
    await trainer.syncFromThreads();
    const ref = await saveTrainingState(store, trainer, adapter, spec.parent, plan, spec.meta);
    hooks.onCheckpoint?.(ref, "training-state", trainer.step);
    return ref;
  };
  // What the job trains with, every default resolved: a client that left fields unset reads them here.
  hooks.onLog?.(`settings: ${JSON.stringify({ method: spec.method, lora: spec.lora, training: spec.training, steps: trainer.totalSteps, examples: plan.examples, ...(plan.guard && { guard: plan.guard }) })}`);
  try {
    if (hooks.resumeFrom) {
      const step = await restoreTrainingState(store, hooks.resumeFrom, trainer, adapter, plan);
      hooks.onLog?.(`resumed at step ${step} of ${trainer.totalSteps} from ${hooks.resumeFrom.uri}`);
    }
    if (threads > 1) {
      // Started once a resumed state is in the adapter and trainer.
      const dataParallel = (trainer.dataParallel = await DataParallelTrainer.start({
        config: parent.model.config, weights: parent.model.exportWeights(), lora: { config: spec.lora, weights: adapter.exportWeights() },
        recipe, weightDecay: spec.training.weightDecay, threads,
      }));
      await dataParallel.importState(trainer.exportState());
      hooks.onLog?.(`training data-parallel on ${threads} threads`);
    }
    const wrap = hooks.step ?? (async (run) => run());
    while (!trainer.done) {
      if (hooks.signal?.aborted) {
        await checkpoint();
        return undefined;
      }
      const metrics = await wrap(() => (trainer.dataParallel ? trainer.runStepOnThreads() : trainer.runStep(hooks.phase)));
      hooks.onStep?.(metrics);
      // The threads resolve a relative rho: bring it here after the first step.
      if (trainer.dataParallel && step instanceof VaccineStep && typeof step.rhoSetting !== "number" && !calibrationLogged) await trainer.syncFromThreads();
      const c = calibration();
      if (c && !calibrationLogged) {
        calibrationLogged = true;
        hooks.onLog?.(`rho_relative ${c.rhoRelative} x attention-output norm ${c.attentionNorm} of the first batch = rho ${c.rho}`);
      }
      if (metrics.step % spec.checkpointEvery === 0 && !trainer.done && (await (hooks.keepTrainingState?.(metrics.step) ?? true))) await checkpoint();
      // Training is synchronous tensor work: yield so RPCs (Cancel, Watch) are served between steps.
      await nextTurn();
    }
    await trainer.syncFromThreads();
    hooks.onLog?.(`loss of the last batch after the last update, without perturbation or dropout: ${trainer.finalLoss()}`);
    const dir = await mkdtemp(join(tmpdir(), "vaccine-adapter-"));
    try {
      await writeAdapterFolder(dir, adapter, spec.parent);
      const ref = await store.put(dir, {
        kind: KIND.adapter,
        meta: { parent: spec.parent, method: spec.method, ...(guarded.plan && { guard: guarded.plan }), ...vaccineMeta(calibration()), steps: trainer.totalSteps, ...spec.meta },
      });
      hooks.onCheckpoint?.(ref, "result", trainer.step);
      return ref;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  } finally {
    await trainer.dataParallel?.close();
    trainer.dispose();
    adapter.dispose();
    parent.dispose();
  }
}

/** VACCINE_TRAIN_THREADS (suite/config.ts): threads a training step is split over (train/data-parallel.ts); default 1. */
export function trainThreads(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.VACCINE_TRAIN_THREADS ?? "1";
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`VACCINE_TRAIN_THREADS must be an integer >= 1, got ${JSON.stringify(raw)}`);
  return n;
}

/** The result manifest's record of a relative rho (proto VaccineMethod.rho_relative: meta.vaccine). */
function vaccineMeta(c: RhoCalibration | undefined): { vaccine?: Record<string, number> } {
  return c ? { vaccine: { rho_relative: c.rhoRelative, attention_norm: c.attentionNorm, rho: c.rho } } : {};
}
