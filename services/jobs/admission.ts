/**
 * Admission of a training job at Create: its estimated peak memory (job-memory.ts, from the
 * root model's config.json and the spec's sizes) against the per-job limit
 * (VACCINE_JOB_MEMORY_LIMIT_MB). A job over it is refused with RESOURCE_EXHAUSTED before it
 * exists, instead of aborting the training backend later. With the root model's tokenizer it
 * also refuses data that has nothing to train on (checkTrainable).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { rpcError } from "../platform/errors.ts";
import { activeBackend, type BackendName } from "../runtime/backend.ts";
import { encodeRows } from "../runtime/data/collate.ts";
import type { Example } from "../runtime/data/template.ts";
import { readJsonObject } from "../runtime/json.ts";
import { parseLlamaConfig, type LlamaConfig } from "../runtime/model/config.ts";
import { nativeKernelsActive } from "../runtime/native/kernels.ts";
import { lineageOf } from "../runtime/pipeline/load.ts";
import { trainThreads } from "../runtime/pipeline/train-adapter.ts";
import { checkLabelledTokens } from "../runtime/train/loop.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";
import { loadTokenizer, type Tokenizer } from "../runtime/tokenizer.ts";
import { estimateJobMemory, type JobMemoryEstimate, type JobShape } from "./job-memory.ts";
import { loraOf, methodOf, parentOf, trainingOf, type Stage } from "./spec.ts";

const MiB = 2 ** 20;
/** The wasm backend's heap cannot grow past 4 GiB (wasm32), whatever the machine has. */
export const WASM_HEAP_MAX_MB = 4096;

/**
 * The default limit: half of the memory this process may use (its cgroup's limit, else the
 * machine's), shared by the jobs that run at once, and no more than the wasm heap's maximum
 * on the wasm backend.
 */
export function defaultJobMemoryLimitMb(maxRunningJobs: number, backend: BackendName | undefined, memoryBytes = availableMemoryBytes()): number {
  const share = Math.floor(memoryBytes / 2 / Math.max(1, maxRunningJobs) / MiB);
  return backend === "wasm" ? Math.min(share, WASM_HEAP_MAX_MB) : share;
}

/** The limit in force: the configured MiB, or for "auto" (or unset) the default for the backend this process uses. */
export function jobMemoryLimitMb(setting: number | "auto" | undefined, jobsAtOnce: number): number {
  return typeof setting === "number" ? setting : defaultJobMemoryLimitMb(jobsAtOnce, activeBackend());
}

/** cgroup v2 memory.max, else cgroup v1's limit, else physical memory. */
export function availableMemoryBytes(): number {
  const total = os.totalmem();
  for (const file of ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]) {
    try {
      const raw = readFileSync(file, "utf8").trim();
      // "max" (v2) or a huge sentinel (v1) means no limit.
      if (/^\d+$/.test(raw) && Number(raw) < total) return Number(raw);
    } catch {
      // No such cgroup file here.
    }
  }
  return total;
}

/**
 * The job's shape as the estimate needs it: the root model's config and the spec's sizes
 * (defaults applied); a batch never holds more rows than the dataset has examples.
 */
export function jobShapeOf(root: RootModel, stage: Stage, spec: AlignSpec | FineTuneSpec, examples: Example[], harmful?: Example[]): JobShape {
  const { options } = trainingOf(stage, spec.training);
  const lora = loraOf(stage, spec.lora);
  const method = methodOf(spec, stage);
  return {
    model: root.config,
    batchSize: Math.min(options.batchSize, examples.length),
    datasetChars: examples.reduce((n, e) => n + e.instruction.length + e.input.length + e.output.length, 0),
    sequenceLength: options.maxSequenceLength,
    loraRank: lora.r,
    targetModules: lora.targetModules,
    method: method.kind,
    // Data-parallel threads each hold a model copy (train-adapter.ts).
    threads: trainThreads(),
    // Job threads run the backend and kernels this process selected.
    fusedKernels: nativeKernelsActive(),
    // RepNoise's kernel matrices grow with the square of the harmful rows' length, which is
    // often well under max_sequence_length (the built-in set's: about 95 tokens).
    ...(method.kind === "repnoise" && harmful?.length && root.tokenizer && { harmfulLongest: longestRow(root, harmful, options.maxSequenceLength) }),
  };
}

/**
 * The Trainer's refusal of data without a response token within max_sequence_length
 * (NO_TRAINING_TOKENS), at Create rather than when the job starts, perhaps after a wait in the
 * queue; `examples` as the Trainer gets them (a safety mix included), tokenized with the root
 * model's tokenizer, as training collates.
 */
export function checkTrainable(root: RootModel, stage: Stage, spec: AlignSpec | FineTuneSpec, examples: Example[]): void {
  // Without a tokenizer the job reports the problem itself.
  if (!root.tokenizer) return;
  try {
    checkLabelledTokens(examples, root.tokenizer, trainingOf(stage, spec.training).options);
  } catch (err) {
    throw toRpcError(err);
  }
}

/** Longest rows a root model's cache keeps (data sets by content and length). */
const LONGEST_KEPT = 16;

/**
 * Tokens in the longest of the rows as training collates them (template, BOS and EOS,
 * truncated to maxLength); kept per content, since tokenizing the built-in harmful set (2,000
 * rows) with the shipped base model's tokenizer takes 350-470 ms and each RepNoise Create
 * would pay it.
 */
function longestRow(root: RootModel, rows: Example[], maxLength: number): number {
  const key = `${maxLength}:${createHash("sha256").update(JSON.stringify(rows)).digest("hex")}`;
  let longest = root.longest.get(key);
  if (longest === undefined) {
    longest = encodeRows(rows, root.tokenizer!, { maxLength }).reduce((n, r) => Math.max(n, r.ids.length), 0);
    root.longest.set(key, longest);
    if (root.longest.size > LONGEST_KEPT) root.longest.delete(root.longest.keys().next().value!);
  }
  return longest;
}

/** What admission reads of a root model: its config, its tokenizer (undefined: it does not load), longest rows of data sets. */
export interface RootModel {
  config: LlamaConfig;
  tokenizer?: Tokenizer;
  longest: Map<string, number>;
}

/**
 * Root models by digest. A checkout verifies every file of the model (for a 7B model,
 * gigabytes hashed), and a digest's content never changes: once per model.
 */
const rootModels = new Map<string, Promise<RootModel>>();

/** The root model of the spec's parent (its lineage read from the store), as admission reads it. */
export async function rootModel(store: CheckpointStore, stage: Stage, spec: AlignSpec | FineTuneSpec): Promise<RootModel> {
  const field = stage === "align" ? "spec.base_checkpoint" : "spec.aligned_checkpoint";
  try {
    const [root] = await lineageOf(store, parentOf(stage, spec));
    let model = rootModels.get(root.digest);
    if (!model) {
      model = store.get(root).then(({ dir }) => ({ config: parseLlamaConfig(readJsonObject(join(dir, "config.json"))), tokenizer: tokenizerIn(dir), longest: new Map() }));
      rootModels.set(root.digest, model);
      // A failed read (store down) is not remembered.
      model.catch(() => rootModels.delete(root.digest));
    }
    return await model;
  } catch (err) {
    throw toRpcError(err, { checkpointField: field });
  }
}

/** The folder's tokenizer, or undefined: admission then assumes the longest rows, and the job reports the problem itself. */
function tokenizerIn(dir: string): Tokenizer | undefined {
  try {
    return loadTokenizer(dir);
  } catch {
    return undefined;
  }
}

/** Refuses a job whose estimate is over limitMb with RESOURCE_EXHAUSTED, naming the estimate, the limit and what to lower. */
export function admitJob(shape: JobShape, limitMb: number): JobMemoryEstimate {
  const estimate = estimateJobMemory(shape);
  const limit = limitMb * MiB;
  if (estimate.totalBytes <= limit) return estimate;
  const fits = (s: Partial<JobShape>) => estimateJobMemory({ ...shape, ...s }).totalBytes <= limit;
  const batch = largest(shape.batchSize - 1, (b) => fits({ batchSize: b }));
  const length = largest(shape.sequenceLength - 1, (t) => fits({ sequenceLength: t }));
  // Neither alone is enough: the longest sequence that fits one row at a time.
  const single = batch === 0 && length < 2 ? largest(shape.sequenceLength - 1, (t) => fits({ batchSize: 1, sequenceLength: t })) : 0;
  const advice =
    batch > 0 || length >= 2
      ? `lower ${[batch > 0 ? `spec.training.batch_size to ${batch}` : "", length >= 2 ? `spec.training.max_sequence_length to ${length}` : ""].filter(Boolean).join(" or ")}`
      : single >= 2
        ? `lower both: spec.training.batch_size to 1 and spec.training.max_sequence_length to ${single}`
        : "the model alone does not fit; use a smaller model or a server with more memory";
  const mb = (bytes: number) => Math.ceil(bytes / MiB);
  throw rpcError(
    Code.ResourceExhausted,
    "JOB_MEMORY_LIMIT_EXCEEDED",
    `the job needs about ${mb(estimate.totalBytes)} MiB at its peak (batches of ${shape.batchSize} x ${shape.sequenceLength} tokens, ` +
      `LoRA rank ${shape.loraRank}, ${shape.method}), over this server's limit of ${limitMb} MiB per job (VACCINE_JOB_MEMORY_LIMIT_MB): ${advice}`,
    {
      estimate_mb: String(mb(estimate.totalBytes)),
      limit_mb: String(limitMb),
      activations_mb: String(mb(estimate.activationBytes)),
      weights_mb: String(mb(estimate.weightBytes)),
      max_batch_size: String(batch),
      max_sequence_length: String(length),
      lower: "spec.training.batch_size,spec.training.max_sequence_length",
    },
  );
}

/** The largest n in [1, from] with ok(n) (ok is monotone: true below some point), or 0. */
function largest(from: number, ok: (n: number) => boolean): number {
  let lo = 0;
  let hi = Math.max(0, from);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (ok(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
