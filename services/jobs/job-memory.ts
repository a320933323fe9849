/**
 * The peak memory of one training job, estimated from its shapes before it runs: the job's
 * worker thread (its runtime and the dataset's text), the parent's weights, the LoRA adapter
 * with its gradients and AdamW moments, and the activations autodiff keeps for the backward
 * pass, which grow with batch x sequence length (the attention scores with its square). The activation and weight
 * coefficients are a least-squares fit to the wasm heap of 21 measured training steps
 * (built-in shape to 67M parameters, T 64 to 1024, vocabulary 1.5k to 8k; all within +-5% but
 * one +10%), rounded up by about 10%; the runtime and file terms come from the RSS of real jobs.
 * Against 12 real jobs run as the server runs them (bench/job-memory.ts, results in
 * bench/results/job-memory-stock.json) the estimate is 7-24% above the measured peak.
 * The native fused kernels (runtime/native/) keep far fewer activations (one softmax of the
 * attention scores, no copies for head transposes or rotary products, the loss's softmax
 * instead of a dozen vocabulary-wide tensors) and no transposed weights: FUSED_COEFFICIENTS
 * replace those terms then: a least-squares fit to an earlier run of that bench's jobs,
 * rounded up by about 10% (bench/results/job-memory.json holds a later run: 1-32% above the
 * measured peak of each job).
 */
import type { LlamaConfig } from "../runtime/model/config.ts";
import type { AlignmentMethod } from "../runtime/pipeline/alignment-methods.ts";
import { LINEAR_MODULES, linearShape, llamaParameterCount, type LinearModule } from "../runtime/model/llama.ts";

export interface JobShape {
  model: LlamaConfig;
  batchSize: number;
  /** max_sequence_length: the longest batch a step can collate. */
  sequenceLength: number;
  loraRank: number;
  targetModules: readonly LinearModule[];
  method: AlignmentMethod["kind"];
  /** Characters of the dataset's text, which the worker holds as JS strings and examples. */
  datasetChars?: number;
  /** Data-parallel threads the steps run on (VACCINE_TRAIN_THREADS); 1 or absent: the job's own thread. */
  threads?: number;
  /** Whether the steps run the native fused kernels (runtime/native/kernels.ts), which keep fewer activations. */
  fusedKernels?: boolean;
  /**
   * Tokens in the longest row of the harmful data RepNoise reads (its MMD's kernel matrices
   * are a harmful batch's tokens squared); absent: rows as long as sequenceLength.
   */
  harmfulLongest?: number;
}

export interface JobMemoryEstimate {
  totalBytes: number;
  runtimeBytes: number;
  weightBytes: number;
  adapterBytes: number;
  activationBytes: number;
}

const F32 = 4;
const MiB = 2 ** 20;

/** Floats kept per token and layer by the width they scale with, and the other fitted terms. */
export const COEFFICIENTS = {
  /** The worker thread, its tfjs wasm runtime and the files it loads, outside the tensors. */
  runtimeBytes: 160 * MiB,
  /** Per character of dataset text: UTF-16 strings, parsed and templated. */
  datasetCharBytes: 8,
  /** The heap's own floor and growth step. */
  heapBytes: 32 * MiB,
  /**
   * Weights: f32 on the heap with the transposed copies the linears' forward and backward keep,
   * plus the file bytes read at load, which stay until the worker collects them (fitted on
   * bench/job-memory.ts's 85M-parameter job: 1.35x its measured peak).
   */
  weightCopies: 3,
  /** Per token and layer, per unit of q + k + v width (projections, rotary, head split, norms, residuals). */
  qkv: 47,
  /** Per token and layer, per unit of MLP width (gate, up, SiLU and their products). */
  intermediate: 28,
  /** Per token, layer and targeted module, per unit of LoRA rank (x A, its gradient). */
  rank: 3,
  /** Per attention-score element (B x heads x T x T) and layer: scores, scaled, masked, softmax, gradients. */
  scores: 10.5,
  /** Per token, per unit of vocabulary (logits, log-softmax, one-hot, their gradients). */
  vocab: 16,
  /** RepNoise, per token and unit of vocabulary beyond `vocab`: none here (its passes' logits are in `vocab`); see FUSED_COEFFICIENTS. */
  repnoiseVocab: 0,
  /** Vaccine, per token and layer, per unit of hidden width: the zero deltas, their gradients and the perturbation kept across the two passes. */
  vaccineHidden: 3,
  /**
   * RepNoise, per (B x T)^2 element of a harmful batch (T its longest row): the kernel matrices
   * of the MMD of one layer, alive together while its value and closed-form gradient are taken
   * from one set of them (mmd2Part: none stays on the tape, so layers do not add up); fitted
   * on the fused run (12.7 a pair, rounded up).
   */
  mmdPairs: 16,
  /** Booster: adapter-sized tensors beyond SFT's (two more gradients and the weights saved across the shifted pass). */
  boosterAdapterCopies: 3,
} as const;

/**
 * The terms that differ with the native fused kernels (the others as COEFFICIENTS). A decoder
 * layer's blocks are one kernel each, their intermediates in a scratch buffer
 * (native/decoder-block-kernel.ts); the products read the weights with transpose flags instead
 * of keeping transposed copies; training losses take the head with the loss (causalLmHeadLoss:
 * no [tokens, vocab] tensor, so `vocab` is 0; only RepNoise's harmful pass holds logits,
 * `repnoiseVocab`); attention keeps only the causal blocks of its softmax (`scores` 1). Least
 * squares on bench/results/job-memory.json, rounded up: the estimates stay 1.17-1.46x above
 * the measured peaks. How each term came to its value: bench/README.md.
 */
export const FUSED_COEFFICIENTS = { qkv: 2, intermediate: 5, scores: 1, vocab: 0, repnoiseVocab: 12, weightCopies: 2.2, vaccineHidden: 2 } as const;

export function estimateJobMemory(s: JobShape): JobMemoryEstimate {
  const threads = s.threads ?? 1;
  if (threads > 1) {
    // The job's thread keeps its model, adapter and data but runs no step; each training thread
    // has a runtime, a model copy, the adapter and the activations of its share of the rows.
    const job = threadEstimate(s, s.batchSize);
    const each = threadEstimate({ ...s, datasetChars: 0, batchSize: Math.ceil(s.batchSize / threads) }, s.batchSize);
    const sum = (k: keyof JobMemoryEstimate) => threads * each[k] + (k === "activationBytes" ? 0 : job[k]);
    const activationBytes = sum("activationBytes");
    return {
      totalBytes: job.totalBytes - job.activationBytes + threads * each.totalBytes,
      runtimeBytes: sum("runtimeBytes"),
      weightBytes: sum("weightBytes"),
      adapterBytes: sum("adapterBytes"),
      activationBytes,
    };
  }
  return threadEstimate(s, s.batchSize);
}

/**
 * What one thread holds running the steps of `s`; wholeBatch: the rows of the whole batch,
 * which a data-parallel thread's MMD kernel matrices span besides its own (repnoise-step.ts).
 */
function threadEstimate(s: JobShape, wholeBatch: number): JobMemoryEstimate {
  const c = s.model;
  const k = s.fusedKernels ? { ...COEFFICIENTS, ...FUSED_COEFFICIENTS } : COEFFICIENTS;
  const tokens = s.batchSize * s.sequenceLength;
  const layers = c.numHiddenLayers;
  const weightBytes = llamaParameterCount(c) * F32;
  const targeted = LINEAR_MODULES.filter((m) => s.targetModules.includes(m));
  const loraParams = layers * targeted.reduce((n, m) => n + s.loraRank * linearShape(c, m).reduce((a, b) => a + b, 0), 0);
  // Weights, gradients and two AdamW moments.
  const adapterBytes = loraParams * F32 * (4 + (s.method === "booster" ? k.boosterAdapterCopies : 0));
  const perturbs = s.method === "vaccine" || s.method === "t_vaccine";
  const qkv = (c.numAttentionHeads + 2 * c.numKeyValueHeads) * c.headDim;
  const perTokenLayer = k.qkv * qkv + k.intermediate * c.intermediateSize + k.rank * s.loraRank * targeted.length + (perturbs ? k.vaccineHidden * c.hiddenSize : 0);
  const vocab = k.vocab + (s.method === "repnoise" ? k.repnoiseVocab : 0);
  const floats = tokens * (layers * perTokenLayer + vocab * c.vocabSize) + k.scores * layers * s.batchSize * c.numAttentionHeads * s.sequenceLength ** 2;
  const harmfulRow = Math.min(s.harmfulLongest ?? s.sequenceLength, s.sequenceLength);
  const mmd = s.method === "repnoise" ? k.mmdPairs * (s.batchSize * harmfulRow) * (wholeBatch * harmfulRow) : 0;
  const activationBytes = F32 * (floats + mmd);
  const runtimeBytes = k.runtimeBytes + k.datasetCharBytes * (s.datasetChars ?? 0);
  const totalBytes = runtimeBytes + k.heapBytes + k.weightCopies * weightBytes + adapterBytes + activationBytes;
  return { totalBytes: Math.ceil(totalBytes), runtimeBytes, weightBytes, adapterBytes, activationBytes: Math.ceil(activationBytes) };
}
