/**
 * The training loop shared by pre-training, alignment (SFT, Vaccine or a defence) and user
 * fine-tuning: seeded data order, collation, a step function (step.ts), global-norm
 * clipping, AdamW with linear warm-up and cosine decay, and per-step metrics. One loop;
 * methods differ only in their step function.
 */
import * as tf from "@tensorflow/tfjs";
import { collate, encodeRows, padRows, type EncodedRow } from "../data/collate.ts";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import type { LlamaModel } from "../model/llama.ts";
import { causalLmHeadLoss, IGNORE_INDEX } from "../model/loss.ts";
import { loraWeightName, type LoraAdapter } from "../model/lora.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { AdamW, clipCoefficient } from "./adamw.ts";
import { batchAt, batchesPerEpoch } from "./batches.ts";
import { learningRateAt } from "./schedule.ts";
import type { DataParallelTrainer } from "./data-parallel.ts";
import { PHASES, type BatchSource, type PhaseName, type PhaseRunner, type PhaseTiming, type StepFunction, type StepOutput, type TrainBatch } from "./step.ts";

export interface TrainOptions {
  learningRate: number;
  /** Passes over the data; used when maxSteps is not set. */
  epochs?: number;
  maxSteps?: number;
  batchSize: number;
  maxSequenceLength: number;
  warmupRatio: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
  /** "response": loss on answers only (alignment, fine-tuning); "all": every token (pre-training). */
  mode?: "response" | "all";
}

export interface StepMetrics {
  /** 1-based number of the step just taken. */
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  gradNorm: number;
  perturbationNorm: number;
  learningRate: number;
  tokens: number;
  stepMs: number;
  perturbationMs: number;
  updateMs: number;
  /** Set for a step run on data-parallel threads: thread 0's passes (the job layer's spans). */
  phases?: PhaseTiming[];
  /** Lisa's state and proximal term of the step, when the run uses Lisa. */
  lisa?: StepOutput["lisa"];
}

/** A loss that is NaN or infinite: training has diverged and must stop, not write garbage. */
export class TrainingDivergedError extends Error {
  readonly reason = "LOSS_NOT_FINITE";
  /** `afterUpdate`: the loss was measured after the step's update (Trainer.finalLoss), not before it. */
  constructor(readonly step: number, readonly loss: number, afterUpdate = false) {
    super(`training diverged: the loss ${afterUpdate ? `after the update of step ${step}, the last,` : `at step ${step}`} is ${loss}`);
  }
}

/**
 * No example keeps a labelled token within maxSequenceLength (every prompt fills it): each
 * step would have loss 0 and train nothing, and the job would still succeed.
 */
export class NoTrainingTokensError extends Error {
  readonly reason = "NO_TRAINING_TOKENS";
  constructor(readonly examples: number, readonly maxSequenceLength: number) {
    super(`none of the ${examples} examples has a response token within max_sequence_length ${maxSequenceLength}: every prompt fills it`);
  }
}

export interface TrainerInit {
  model: LlamaModel;
  /** Train this adapter only; without it every model weight is trained. */
  lora?: LoraAdapter;
  data: ReadonlyArray<Example | string>;
  tokenizer: Tokenizer;
  options: TrainOptions;
  stepFn: StepFunction;
}

/** What a resumable training checkpoint holds besides the trained weights. */
export interface TrainerState {
  step: number;
  optimizer: HostTensors;
  stepState: HostTensors;
}

export class Trainer {
  readonly totalSteps: number;
  /** 0-based index of the next step. */
  step = 0;
  readonly params: Map<string, tf.Variable>;
  private readonly optimizer: AdamW;
  /**
   * Threads that compute the steps data-parallel (data-parallel.ts; runStepOnThreads), started
   * with this trainer's weights and state. The weights, optimizer and step function here then
   * hold what they held at the last syncFromThreads.
   */
  dataParallel?: DataParallelTrainer;
  /**
   * The rows of each dataset the steps read (the training data; Lisa's alignment data too),
   * tokenized the first time a batch holds them: a later epoch tokenizes nothing, as the
   * reference's tokenized dataset does not.
   */
  private readonly rows = new Map<BatchSource["data"], EncodedRow[]>();

  constructor(private readonly init: TrainerInit) {
    const { model, lora, data, options } = init;
    if (data.length === 0) throw new RangeError("training data is empty");
    const perEpoch = batchesPerEpoch(data.length, options.batchSize);
    this.totalSteps = options.maxSteps ?? (options.epochs ?? 1) * perEpoch;
    if (!(this.totalSteps >= 1)) throw new RangeError(`training needs at least one step, got ${this.totalSteps}`);
    checkLabelledTokens(data, init.tokenizer, options);
    if (lora) {
      this.params = new Map();
      for (const [name, pair] of lora.pairs) {
        this.params.set(loraWeightName(name, "A"), pair.a);
        this.params.set(loraWeightName(name, "B"), pair.b);
      }
    } else {
      this.params = new Map(model.weights);
    }
    for (const v of this.params.values()) v.trainable = true;
    // HF Trainer exempts norm weights from decay; LoRA matrices all decay.
    this.optimizer = new AdamW(this.params, { weightDecay: options.weightDecay, decays: (n) => !n.endsWith("norm.weight") });
  }

  get done(): boolean {
    return this.step >= this.totalSteps;
  }

  /** Step `step`'s batch as collated, learning rate and dropout seed (the next step's by default). */
  private nextStep(step = this.step) {
    const { data, tokenizer, options, stepFn } = this.init;
    const source = stepFn.batchSource?.(step) ?? { data, position: step, userBatches: step + 1 };
    const { indices } = batchAt(source.data.length, options.batchSize, options.seed, source.position);
    let rows = this.rows.get(source.data);
    if (!rows) this.rows.set(source.data, (rows = []));
    for (const i of indices) rows[i] ??= encodeRows([source.data[i]], tokenizer, { maxLength: options.maxSequenceLength, mode: options.mode })[0];
    const collated = padRows(indices.map((i) => rows[i]), tokenizer.padId);
    const learningRate = learningRateAt(step, this.totalSteps, options.learningRate, options.warmupRatio);
    const dropoutSeed = (Math.imul(options.seed >>> 0, 0x85ebca6b) ^ (step + 1)) >>> 0;
    return { step, source, collated, learningRate, dropoutSeed };
  }

  /** The next step on the data-parallel threads (TrainerInit.dataParallel): the same batch, schedule and metrics as runStep. */
  async runStepOnThreads(): Promise<StepMetrics> {
    const dp = this.dataParallel;
    if (!dp) throw new Error("the trainer has no data-parallel threads");
    const started = performance.now();
    const { step, source, collated, learningRate, dropoutSeed } = this.nextStep();
    const out = await dp.step({ batch: collated, step, learningRate, gradClip: this.init.options.gradClip, dropoutSeed });
    this.step++;
    return { ...this.metrics(source, out, { learningRate, tokens: labelledTokens(collated), started, perturbationMs: out.perturbationMs, updateMs: out.updateMs }), phases: out.phases };
  }

  /** Brings the weights, optimizer moments and step state here to the data-parallel threads' (before a checkpoint or the result). */
  async syncFromThreads(): Promise<void> {
    const dp = this.dataParallel;
    if (!dp) return;
    const [weights] = await dp.weights();
    for (const [name, p] of this.params) tf.tidy(() => p.assign(tf.tensor(weights.get(name)!.data, p.shape)));
    const state = await dp.exportState(this.step);
    this.optimizer.importState(state.optimizer, this.step);
    this.init.stepFn.importState?.(state.stepState, this.step);
  }

  /** Runs the next step and returns its metrics; throws TrainingDivergedError on a non-finite loss. */
  runStep(phase: PhaseRunner = (_, fn) => fn()): StepMetrics {
    const { model, lora, options, stepFn } = this.init;
    const started = performance.now();
    const { step, source, collated, learningRate, dropoutSeed } = this.nextStep();
    const batch = toTensors(collated);
    lora?.reseedDropout(dropoutSeed);
    const timings = Object.fromEntries(PHASES.map((name) => [name, 0])) as Record<PhaseName, number>;
    const timed: PhaseRunner = (name, fn) =>
      phase(name, () => {
        const t0 = performance.now();
        try {
          return fn();
        } finally {
          timings[name] += performance.now() - t0;
        }
      });
    const update = (loss: number, grads: Map<string, tf.Tensor>): number => {
      try {
        if (!Number.isFinite(loss)) throw new TrainingDivergedError(step + 1, loss);
        const { norm, scale } = clipCoefficient(grads, options.gradClip);
        if (!Number.isFinite(norm)) throw new TrainingDivergedError(step + 1, norm);
        this.optimizer.apply(grads, learningRate, scale);
        return norm;
      } finally {
        for (const g of grads.values()) g.dispose();
      }
    };
    let out;
    try {
      out = stepFn.run({ model, lora, params: this.params, batch, step, phase: timed, update });
    } finally {
      disposeBatch(batch);
    }
    this.step++;
    return this.metrics(source, out, { learningRate, tokens: batch.tokens, started, perturbationMs: timings.perturbation, updateMs: timings.update });
  }

  /**
   * The loss of the last step's batch under the final weights, without dropout. A step's loss
   * is measured before its update, so this is the one check of the last update: a run whose
   * last update overflowed would otherwise be stored as a result that answers NaN. Throws
   * TrainingDivergedError when it is not finite.
   */
  finalLoss(): number {
    const { model, lora } = this.init;
    const batch = toTensors(this.nextStep(this.totalSteps - 1).collated);
    try {
      const loss = tf.tidy(() => {
        const { hidden } = model.states(batch.inputIds, batch.attentionMask, { lora, returnHidden: true });
        return causalLmHeadLoss(hidden!, model.head, batch.labels);
      });
      const value = loss.dataSync()[0];
      loss.dispose();
      if (!Number.isFinite(value)) throw new TrainingDivergedError(this.totalSteps, value, true);
      return value;
    } finally {
      disposeBatch(batch);
    }
  }

  /** A step's metrics (this.step already counts it). */
  private metrics(source: BatchSource, out: StepOutput, m: { learningRate: number; tokens: number; started: number; perturbationMs: number; updateMs: number }): StepMetrics {
    const { data, options } = this.init;
    const perEpoch = batchesPerEpoch(data.length, options.batchSize);
    // Epochs over the run's own data, taken as whole epochs plus the batches of the current one.
    const last = source.userBatches - 1;
    return {
      step: this.step,
      totalSteps: this.totalSteps,
      epoch: last < 0 ? 0 : Math.floor(last / perEpoch) + ((last % perEpoch) + 1) / perEpoch,
      loss: out.loss,
      gradNorm: out.gradNorm,
      perturbationNorm: out.perturbationNorm,
      learningRate: m.learningRate,
      tokens: m.tokens,
      stepMs: performance.now() - m.started,
      perturbationMs: m.perturbationMs,
      updateMs: m.updateMs,
      ...(out.lisa && { lisa: out.lisa }),
    };
  }

  /** Optimizer moments, step and the step function's own state, for a training checkpoint. */
  exportState(): TrainerState {
    return { step: this.step, optimizer: this.optimizer.exportState(), stepState: this.init.stepFn.exportState?.(this.step) ?? new Map() };
  }

  /** Continues from a checkpoint written by exportState (the weights are restored by the caller). */
  importState(state: TrainerState): void {
    if (state.step > this.totalSteps) throw new RangeError(`training state is at step ${state.step}, past the ${this.totalSteps} planned`);
    this.optimizer.importState(state.optimizer, state.step);
    this.init.stepFn.importState?.(state.stepState, state.step);
    this.step = state.step;
  }

  dispose(): void {
    this.optimizer.dispose();
    this.init.stepFn.dispose?.();
  }
}

/**
 * Throws NoTrainingTokensError unless some item keeps a labelled token within
 * maxSequenceLength. Usually settled by the first item; only data that cannot train is scanned whole.
 */
export function checkLabelledTokens(data: readonly (Example | string)[], tokenizer: Tokenizer, options: Pick<TrainOptions, "maxSequenceLength" | "mode">): void {
  const collateOptions = { maxLength: options.maxSequenceLength, mode: options.mode };
  if (!data.some((item) => labelledTokens(collate([item], tokenizer, collateOptions)) > 0)) {
    throw new NoTrainingTokensError(data.length, options.maxSequenceLength);
  }
}

/** Positions the loss applies to (labels shift by one, so position 0 never counts). */
export function labelledTokens(b: ReturnType<typeof collate>): number {
  let tokens = 0;
  for (let i = 0; i < b.batch; i++) for (let j = 1; j < b.seqLen; j++) if (b.labels[i * b.seqLen + j] !== IGNORE_INDEX) tokens++;
  return tokens;
}

export function toTensors(b: ReturnType<typeof collate>): TrainBatch {
  const tokens = labelledTokens(b);
  return {
    inputIds: tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32"),
    attentionMask: tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32"),
    labels: tf.tensor2d(b.labels, [b.batch, b.seqLen], "int32"),
    tokens,
  };
}

export function disposeBatch(b: TrainBatch): void {
  b.inputIds.dispose();
  b.attentionMask.dispose();
  b.labels.dispose();
}
