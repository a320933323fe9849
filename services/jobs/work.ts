/**
 * The executor's work function for alignment and fine-tuning jobs: the runtime's
 * trainAdapter with the job's events, training states and telemetry wired in.
 */
import type { Meter } from "@opentelemetry/api";
import { CheckpointKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import { resolveExamples } from "../runtime/pipeline/datasets.ts";
import { lineageOf } from "../runtime/pipeline/load.ts";
import { trainAdapter } from "../runtime/pipeline/train-adapter.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";
import type { JobWork } from "./executor.ts";
import { loraOf, methodOf, parentOf, trainingOf, type Stage } from "./spec.ts";
import { trainingTelemetry } from "./telemetry.ts";

/** The work function for one stage. */
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
