/**
 * What a Create call checks before a job exists: the parent checkpoint exists and has a kind
 * the stage can train on (unknown: NOT_FOUND), the dataset parses (bad: INVALID_ARGUMENT with
 * file and line) and has a response token within max_sequence_length (none:
 * FAILED_PRECONDITION NO_TRAINING_TOKENS), the job's estimated peak memory is within the per-job limit (over:
 * RESOURCE_EXHAUSTED, admission.ts), and for fine-tuning the moderation gate passes. With
 * tenancy every input must be readable by the caller's tenant (docs/security.md): another
 * tenant's checkpoint or dataset is NOT_FOUND exactly as a missing one.
 */
import { Code } from "@connectrpc/connect";
import { AlignSpecSchema, FineTuneSpecSchema, type AlignSpec, type FineTuneSpec, type ModerationGate } from "../../gen/vaccine/v1/training_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { boundsOf } from "../common/bounds.ts";
import { assertRefsReadable, type Scope } from "../common/ownership.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { rpcError } from "../platform/errors.ts";
import { RequestValidator } from "../platform/validate.ts";
import type { Example } from "../runtime/data/template.ts";
import { DEFAULT_THRESHOLD, pairOfExample } from "../runtime/moderation/classifier.ts";
import { resolveExamples, type DatasetSource } from "../runtime/pipeline/datasets.ts";
import { KIND } from "../runtime/pipeline/kinds.ts";
import { safetyMix } from "../runtime/data/safety-mix.ts";
import { admitJob, checkTrainable, jobShapeOf, rootModel } from "./admission.ts";
import { GUARD_DEFAULTS, guardDataset } from "./guard-spec.ts";
import { checkLoraRank, checkTrainingSize } from "./validate.ts";
import { harmfulDatasetOf, parentOf, trainingOf, type Stage } from "./spec.ts";

const PARENT_FIELD: Record<Stage, string> = { align: "spec.base_checkpoint", finetune: "spec.aligned_checkpoint" };

/** Everything a Create call can check before queueing: the parent exists and fits, the data parses (and passes the moderation gate). */
export async function checkJobInputs(
  deps: Pick<SuiteDeps, "store" | "checkpoints" | "builtins" | "jobMemoryLimitMb" | "bounds">,
  stage: Stage,
  spec: AlignSpec | FineTuneSpec,
  scope?: Scope,
  signal?: AbortSignal,
): Promise<void> {
  const { store } = deps;
  // Every input the spec names, the parent and datasets included: a job only uses what its tenant can read.
  if (stage === "align") await assertRefsReadable(deps, scope, AlignSpecSchema, spec as AlignSpec, "spec");
  else await assertRefsReadable(deps, scope, FineTuneSpecSchema, spec as FineTuneSpec, "spec");
  const field = PARENT_FIELD[stage];
  let kind: string;
  try {
    kind = (await store.readManifest(parentOf(stage, spec))).kind;
  } catch (err) {
    throw toRpcError(err, { checkpointField: field });
  }
  const allowed = stage === "align" ? [KIND.model] : [KIND.model, KIND.adapter];
  if (!(allowed as string[]).includes(kind)) {
    throw rpcError(Code.FailedPrecondition, "CHECKPOINT_KIND_INVALID", `${field} is a ${kind} checkpoint; ${stage} needs ${allowed.join(" or ")}`, { field });
  }
  let examples;
  try {
    examples = await resolveExamples(store, datasetSource(spec.dataset));
  } catch (err) {
    throw toRpcError(err, { datasetField: "spec.dataset" });
  }
  // The data a method or a guard reads beside the user's is read now too, so a bad one fails Create, not the job.
  const readExtra = async (extra: { field: string; source: DatasetSource } | undefined) => {
    try {
      return extra && (await resolveExamples(store, extra.source));
    } catch (err) {
      throw toRpcError(err, { datasetField: extra!.field });
    }
  };
  const harmful = await readExtra(harmfulDatasetOf(spec, stage));
  const guardData = await readExtra(stage === "finetune" ? guardDataset(spec as FineTuneSpec) : undefined);
  const guard = stage === "finetune" ? (spec as FineTuneSpec).guard : undefined;
  // What the Trainer will train on: a safety mix adds alignment examples to the user's.
  const trainedData =
    guard?.case === "safetyMix" && guardData ? safetyMix(examples, guardData, guard.value.fraction ?? GUARD_DEFAULTS.safetyMix.fraction, trainingOf(stage, spec.training).options.seed) : examples;
  const root = await rootModel(store, stage, spec);
  const shape = jobShapeOf(root, stage, spec, examples, harmful);
  // What only the model and the data decide: the rank against the width, the steps an
  // epoch count gives over this many examples, and the tokens they train on.
  const v = new RequestValidator();
  checkLoraRank(v, "spec.lora", stage, spec.lora, shape.model.hiddenSize);
  checkTrainingSize(v, "spec.training", stage, spec.training, trainedData.length, boundsOf(deps));
  v.check();
  checkTrainable(root, stage, spec, trainedData);
  if (deps.jobMemoryLimitMb !== undefined) admitJob(shape, deps.jobMemoryLimitMb);
  const gate = stage === "finetune" ? (spec as FineTuneSpec).moderationGate : undefined;
  if (gate?.enabled) await screenDataset(deps, gate, examples, signal);
}

/**
 * The moderation gate: the user's (prompt, answer) pairs through the moderation model; a
 * flagged fraction above the bound refuses the dataset before any training.
 */
async function screenDataset(deps: Pick<SuiteDeps, "checkpoints" | "builtins">, gate: ModerationGate, examples: Example[], signal?: AbortSignal): Promise<void> {
  const ref = gate.moderationModel ? checkpointRefOf(gate.moderationModel) : deps.builtins.moderation;
  if (!ref) {
    throw rpcError(Code.FailedPrecondition, "MODERATION_MODEL_MISSING", "spec.moderation_gate.moderation_model: unset, and this server has no built-in moderation model");
  }
  const verdicts = await deps.checkpoints
    .useModeration(ref, (c) => c.classifyInTurns(examples.map(pairOfExample), gate.threshold ?? DEFAULT_THRESHOLD, signal))
    .catch((err) => {
      if (signal?.aborted) throw err;
      throw toRpcError(err, { checkpointField: "spec.moderation_gate.moderation_model" });
    });
  const flagged = verdicts.filter((v) => v.flagged);
  const fraction = flagged.length / verdicts.length;
  const bound = gate.maxFlaggedFraction ?? 0;
  if (fraction > bound) {
    const categories = [...new Set(flagged.map((v) => v.topCategory))].sort();
    throw rpcError(
      Code.FailedPrecondition,
      "TRAINING_DATA_UNSAFE",
      `spec.dataset: ${flagged.length} of ${verdicts.length} examples (${(100 * fraction).toFixed(1)}%) are flagged as harmful (${categories.join(", ")}); the gate allows ${(100 * bound).toFixed(1)}%`,
      { flagged_fraction: fraction.toFixed(4), flagged: String(flagged.length), total: String(verdicts.length), categories: categories.join(",") },
    );
  }
}
