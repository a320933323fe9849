/**
 * Data-parallel training over worker threads (issue 17, "both cores"). Each thread has its own
 * tfjs runtime and copy of the model and computes the step on its rows of the batch
 * (data-parallel-worker.ts). A shard's loss is its tokens' loss sum over the whole batch's
 * token count (TrainBatch.shareOfBatch), so the shards' gradients add up to the whole batch's;
 * they are added through shared memory (shared-sum.ts) and every thread applies the same
 * clipping and AdamW update, so the copies stay identical without sending weights. The result
 * is the single-thread step's up to float rounding, for every method and guard: each thread
 * makes its step function from the run's recipe (StepRecipe), and what a step needs of the
 * whole batch besides the gradient goes through the same sums (shard.ts: Vaccine's and
 * T-Vaccine's norms, Booster's shift, RepNoise's MMD, the harmful batch's token count), while
 * LoRA dropout's masks are the whole batch's cut to each thread's rows (LoraAdapter.dropoutWindow).
 */
import type { Worker } from "node:worker_threads";
import { activeBackend } from "../backend.ts";
import type { Batch } from "../data/collate.ts";
import type { HostTensors } from "../host-tensor.ts";
import type { LlamaConfig } from "../model/config.ts";
import type { LoraConfig } from "../model/lora.ts";
import type { StepRecipe } from "../pipeline/alignment-methods.ts";
import { loadBlasAddon } from "../native/blas-addon.ts";
import type { NativeKernelMode } from "../native/kernels.ts";
import { startWorker } from "../start-worker.ts";
import { TrainingDivergedError, type TrainerState } from "./loop.ts";
import { abortSharedSum, PeerFailedError, sharedSumBuffers, type SharedSumBuffers } from "./shared-sum.ts";
import type { PhaseTiming, StepOutput } from "./step.ts";
import { EPS_KEY } from "./vaccine-step.ts";

export interface DataParallelInit {
  config: LlamaConfig;
  /** The base model's weights. */
  weights: HostTensors;
  /** The adapter to train; without it every model weight trains. */
  lora?: { config: LoraConfig; weights: HostTensors };
  /** What each thread makes its step function from: the run's own. */
  recipe: StepRecipe;
  /** AdamW's, with norm weights exempt as in the training loop. */
  weightDecay: number;
  /** Default 2. */
  threads?: number;
  /** tfjs backend of every thread; default: this thread's, else VACCINE_BACKEND, else auto. */
  backend?: string;
  nativeKernels?: NativeKernelMode;
  /** OpenBLAS threads (a process-wide setting); default: the addon's own (1 unless set in the environment). */
  blasThreads?: number;
}

export interface DataParallelStep {
  /** The whole batch, as collated. */
  batch: Batch;
  /** 0-based index of the step. */
  step: number;
  learningRate: number;
  gradClip: number;
  /** The step's LoRA dropout seed, as the training loop reseeds with it. */
  dropoutSeed: number;
}

export interface DataParallelStepOutput extends StepOutput {
  /** Thread 0's time in Vaccine's pass 1 and in the update pass (ms). */
  perturbationMs: number;
  updateMs: number;
  /** Thread 0's passes, in the order they ran. */
  phases: PhaseTiming[];
  /** tf.memory().numTensors of each thread after the step. */
  threadTensors: number[];
}

/** What the coordinator gives each thread at its start. */
export interface WorkerInit extends Omit<DataParallelInit, "threads" | "backend"> {
  backend: string;
  rank: number;
  sum: SharedSumBuffers;
}

export interface ShardStepResult extends Omit<DataParallelStepOutput, "threadTensors"> {
  numTensors: number;
}

/** Each thread gets the whole batch and takes its rows (shard.ts). */
export type ToWorker =
  | ({ t: "step" } & DataParallelStep)
  | { t: "weights" }
  | { t: "state"; step: number }
  | { t: "importState"; state: TrainerState };
export type FromWorker =
  | { t: "ready" }
  | { t: "stepped"; result: ShardStepResult }
  | { t: "weights"; weights: HostTensors }
  | { t: "state"; state: TrainerState }
  | { t: "imported" }
  | { t: "failed"; error: WorkerError };

/** An error of a thread, as a message; TrainingDivergedError keeps its class across. */
export interface WorkerError {
  name: string;
  message: string;
  step?: number;
  loss?: number;
}

interface Pending {
  resolve(m: FromWorker): void;
  reject(err: Error): void;
}

export class DataParallelTrainer {
  private readonly pending: Pending[][];
  private failure: Error | undefined;
  private closing = false;
  private live: number;

  private constructor(
    private readonly workers: Worker[],
    private readonly sum: SharedSumBuffers,
    private readonly recipe: StepRecipe,
  ) {
    this.live = workers.length;
    this.pending = workers.map(() => []);
    workers.forEach((w, rank) => {
      w.on("message", (m: FromWorker) => {
        const p = this.pending[rank].shift();
        if (m.t !== "failed") return p?.resolve(m);
        const err = fromWorkerError(m.error);
        // A thread released by another's failure: that one reports the cause.
        if (!(err instanceof PeerFailedError)) this.fail(err);
        p?.reject(err);
      });
      w.on("error", (err) => this.failAll(rank, err));
      w.on("exit", (code) => {
        this.live--;
        this.failAll(rank, new Error(`data-parallel thread ${rank} exited with code ${code}`));
      });
    });
  }

  /** Starts the threads, each with its copy of the model; resolves once all are ready. */
  static async start(init: DataParallelInit): Promise<DataParallelTrainer> {
    const { threads = 2, backend = activeBackend() ?? process.env.VACCINE_BACKEND ?? "auto", ...rest } = init;
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be an integer >= 1, got ${threads}`);
    const trained = init.lora?.weights ?? init.weights;
    // Every gradient and the loss, in one sum.
    const capacity = [...trained.values()].reduce((n, t) => n + t.data.length, 0) + 1;
    const sum = sharedSumBuffers(threads, capacity);
    // OpenBLAS reads the core type blas-addon.ts chooses from the environment once, when first
    // loaded, and a worker thread's process.env does not reach the C environment: load it here.
    if (init.nativeKernels !== "off") loadBlasAddon();
    // The threads are given their batches: Lisa's data sets stay here.
    const recipe = { ...init.recipe, lisa: init.recipe.lisa && { options: init.recipe.lisa.options } };
    const workers = Array.from({ length: threads }, (_, rank) =>
      startWorker(import.meta.url, "./data-parallel-worker", { workerData: { ...rest, recipe, backend, rank, sum } satisfies WorkerInit }),
    );
    const trainer = new DataParallelTrainer(workers, sum, init.recipe);
    try {
      await trainer.all(() => undefined);
    } catch (err) {
      await trainer.close();
      throw err;
    }
    return trainer;
  }

  /** Threads still running (0 after close). */
  get liveThreads(): number {
    return this.live;
  }

  /** One training step on the batch split by rows across the threads. */
  async step(request: DataParallelStep): Promise<DataParallelStepOutput> {
    const replies = await this.all(() => ({ t: "step", ...request }));
    const results = replies.map((m) => (m as { result: ShardStepResult }).result);
    const [first] = results;
    // Equal sums and equal updates give equal outcomes on every thread; anything else is a bug.
    if (results.some((r) => r.gradNorm !== first.gradNorm || r.perturbationNorm !== first.perturbationNorm)) {
      throw this.fail(new Error(`data-parallel threads disagree: ${JSON.stringify(results)}`));
    }
    const { numTensors: _, ...output } = first;
    // Each reports its rows' part of the loss (as the step reports it: Lisa's without its
    // proximal term), added here in float32 and thread order, as the shared sums add.
    const loss = results.reduce((sum, r) => Math.fround(sum + r.loss), 0);
    return { ...output, loss, threadTensors: results.map((r) => r.numTensors) };
  }

  /** The trained weights (the adapter's, or the model's) of each thread. */
  async weights(): Promise<HostTensors[]> {
    return (await this.all(() => ({ t: "weights" }))).map((m) => (m as { weights: HostTensors }).weights);
  }

  /**
   * The training state as the single-thread loop writes it (loop.ts TrainerState), for a
   * checkpoint: thread 0's, as every thread holds the same (optimizer moments, Vaccine's
   * perturbation kept for reuse). With tau = 1 the perturbation is never reused, and each
   * thread holds only its rows of it: it is left out.
   */
  async exportState(step: number): Promise<TrainerState> {
    const [first] = await this.all(() => ({ t: "state", step }), [0]);
    const { state } = first as { state: TrainerState };
    const { method } = this.recipe;
    if (method.kind === "vaccine" && method.refreshEvery === 1) {
      for (const key of state.stepState.keys()) if (key.startsWith(EPS_KEY)) state.stepState.delete(key);
    }
    return state;
  }

  /** Continues from a training state (of this trainer or of the single-thread loop); the weights come with start. */
  async importState(state: TrainerState): Promise<void> {
    await this.all(() => ({ t: "importState", state }));
  }

  /** Terminates every thread; the trainer cannot be used after. */
  async close(): Promise<void> {
    this.closing = true;
    this.fail(new Error("the data-parallel trainer is closed"));
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /**
   * Sends each thread of `ranks` (default all) its message (none: only awaits the next reply)
   * and awaits their replies; the first real failure wins.
   */
  private async all(message: (rank: number) => ToWorker | undefined, ranks = this.workers.map((_, rank) => rank)): Promise<FromWorker[]> {
    if (this.failure) throw this.failure;
    const replies = ranks.map(
      (rank) =>
        new Promise<FromWorker>((resolve, reject) => {
          this.pending[rank].push({ resolve, reject });
          const m = message(rank);
          if (m) this.workers[rank].postMessage(m);
        }),
    );
    const settled = await Promise.allSettled(replies);
    const errors = settled.flatMap((s) => (s.status === "rejected" ? [s.reason as Error] : []));
    if (errors.length > 0) throw errors.find((e) => !(e instanceof PeerFailedError)) ?? errors[0];
    return settled.map((s) => (s as PromiseFulfilledResult<FromWorker>).value);
  }

  /** Marks the trainer unusable and releases threads waiting in a sum; returns the error. */
  private fail(err: Error): Error {
    this.failure ??= err;
    abortSharedSum(this.sum);
    return err;
  }

  private failAll(rank: number, err: Error): void {
    if (!this.closing) this.fail(err);
    for (const p of this.pending[rank].splice(0)) p.reject(err);
  }
}

function fromWorkerError(e: WorkerError): Error {
  if (e.name === "TrainingDivergedError") return new TrainingDivergedError(e.step!, e.loss!);
  if (e.name === "PeerFailedError") return new PeerFailedError();
  return Object.assign(new Error(e.message), { name: e.name });
}
