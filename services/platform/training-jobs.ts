/**
 * Alignment and fine-tuning jobs between the contracts and the runtime: checks a Create
 * request against the store before a job exists (unknown checkpoint: NOT_FOUND; bad
 * dataset: INVALID_ARGUMENT with file and line), and the executor's work function that
 * runs the runtime's trainAdapter with events, training states and telemetry wired in.
 */
import type { Meter } from "@opentelemetry/api";
import { Code } from "@connectrpc/connect";
import { CheckpointKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec, ModerationGate } from "../../gen/vaccine/v1/training_pb.ts";
import type { Example } from "../runtime/data/template.ts";
import { DEFAULT_THRESHOLD, pairOfExample } from "../runtime/moderation/classifier.ts";
import { resolveExamples } from "../runtime/pipeline/datasets.ts";
import { KIND, lineageOf } from "../runtime/pipeline/load.ts";
import { trainAdapter } from "../runtime/pipeline/train-adapter.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";
import type { SuiteDeps } from "./deps.ts";
import { rpcError } from "./errors.ts";
import type { JobWork } from "./jobs/executor.ts";
import { toRpcError } from "./runtime-errors.ts";
import { checkpointRefOf, datasetSource, loraOf, methodOf, trainingOf, type Stage } from "./training-spec.ts";
import { trainingTelemetry } from "./training-telemetry.ts";

const PARENT_FIELD: Record<Stage, string> = { align: "spec.base_checkpoint", finetune: "spec.aligned_checkpoint" };

function parentOf(stage: Stage, spec: AlignSpec | FineTuneSpec) {
  return checkpointRefOf(stage === "align" ? (spec as AlignSpec).baseCheckpoint : (spec as FineTuneSpec).alignedCheckpoint);
}

/** Everything a Create call can check before queueing: the parent exists and fits, the data parses (and passes the moderation gate). */
export async function checkJobInputs(deps: Pick<SuiteDeps, "store" | "checkpoints" | "builtins">, stage: Stage, spec: AlignSpec | FineTuneSpec): Promise<void> {
  const { store } = deps;
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
  const gate = stage === "finetune" ? (spec as FineTuneSpec).moderationGate : undefined;
  if (gate?.enabled) await screenDataset(deps, gate, examples);
}

/**
 * The moderation gate: the user's (prompt, answer) pairs through the moderation model; a
 * flagged fraction above the bound refuses the dataset before any training.
 */
async function screenDataset(deps: Pick<SuiteDeps, "checkpoints" | "builtins">, gate: ModerationGate, examples: Example[]): Promise<void> {
  const ref = gate.moderationModel ? checkpointRefOf(gate.moderationModel) : deps.builtins.moderation;
  if (!ref) {
    throw rpcError(Code.FailedPrecondition, "MODERATION_MODEL_MISSING", "spec.moderation_gate.moderation_model: unset, and this server has no built-in moderation model");
  }
  const verdicts = await deps.checkpoints
    .useModeration(ref, (c) => c.classify(examples.map(pairOfExample), gate.threshold ?? DEFAULT_THRESHOLD))
    .catch((err) => {
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

/** The executor's work function for one stage. */
export function trainingWork(store: CheckpointStore, meter: Meter, stage: Stage): JobWork {
  return async (ctx) => {
    const spec = ctx.job.spec.value as AlignSpec | FineTuneSpec;
    const method = methodOf(spec, stage);
    const { options, checkpointEvery } = trainingOf(stage, spec.training);
    const telemetry = trainingTelemetry(ctx.tracer, meter, { kind: stage, method: method.kind, rho: method.kind === "vaccine" ? method.rho : 0 });
    const data = await resolveExamples(store, datasetSource(spec.dataset));
    const result = await trainAdapter(
      store,
      { parent: parentOf(stage, spec), data, method, lora: loraOf(stage, spec.lora), training: options, checkpointEvery, meta: { job: ctx.job.id } },
      {
        signal: ctx.signal,
        resumeFrom: ctx.job.trainingState && checkpointRefOf(ctx.job.trainingState),
        step: telemetry.step,
        phase: telemetry.phase,
        onStep: (m) => {
          ctx.progress({ step: m.step, totalSteps: m.totalSteps, epoch: m.epoch, loss: m.loss });
          ctx.emit({
            case: "step",
            value: {
              step: m.step,
              totalSteps: m.totalSteps,
              epoch: m.epoch,
              loss: m.loss,
              gradNorm: m.gradNorm,
              perturbationNorm: m.perturbationNorm,
              learningRate: m.learningRate,
              stepSeconds: m.stepMs / 1000,
              perturbationSeconds: m.perturbationMs / 1000,
              updateSeconds: m.updateMs / 1000,
              tokens: m.tokens,
            },
          });
        },
        onCheckpoint: (ref, kind, step) => {
          const checkpointKind = kind === "result" ? CheckpointKind.RESULT : CheckpointKind.TRAINING_STATE;
          ctx.emit({ case: "checkpointWritten", value: { checkpoint: ref, kind: checkpointKind, step } });
          if (kind === "training-state") ctx.setTrainingState(ref);
        },
        onLog: (message) => ctx.emit({ case: "log", value: { severity: 1, message } }),
      },
    );
    return result && { result, lineage: await lineageOf(store, result) };
  };
}
