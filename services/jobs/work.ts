/**
 * The executor's work function for alignment and fine-tuning jobs: the runtime's
 * trainAdapter with the job's events, training states and telemetry wired in. Every
 * checkpoint the job writes (training states, the result) belongs to the job's tenant
 * (docs/security.md, "Tenancy"): claimed here, where it is written, in either executor.
 */
import type { Meter } from "@opentelemetry/api";
import { CheckpointKind, LogSeverity } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec, FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import { resolveExamples } from "../runtime/pipeline/datasets.ts";
import { lineageOf } from "../runtime/pipeline/load.ts";
import { trainAdapter } from "../runtime/pipeline/train-adapter.ts";
import { checkpointHex, type CheckpointRef, type CheckpointStore } from "../runtime/store/store.ts";
import { checkpointBytes, claim, usageOf } from "../common/ownership.ts";
import type { JobWork } from "./executor.ts";
import { harmfulDatasetOf, loraOf, methodOf, parentOf, trainingOf, type Stage } from "./spec.ts";
import { guardOf } from "./guard-spec.ts";
import { trainingTelemetry } from "./telemetry.ts";

/** The work function for one stage. */
export function trainingWork(store: CheckpointStore, meter: Meter, stage: Stage, storedBytesQuota = 0): JobWork {
  return async (ctx) => {
    const spec = ctx.job.spec.value as AlignSpec | FineTuneSpec;
    const method = methodOf(spec, stage);
    const { options, checkpointEvery } = trainingOf(stage, spec.training);
    // A relative rho is known only after the first batch: the span attribute then says NaN.
    const rho = method.kind === "vaccine" || method.kind === "t_vaccine" ? (typeof method.rho === "number" ? method.rho : Number.NaN) : 0;
    const telemetry = trainingTelemetry(ctx.tracer, meter, { kind: stage, method: method.kind, rho });
    const data = await resolveExamples(store, datasetSource(spec.dataset));
    const harmfulData = harmfulDatasetOf(spec, stage);
    const harmful = harmfulData && (await resolveExamples(store, harmfulData.source));
    const guard = stage === "finetune" ? await guardOf(store, spec as FineTuneSpec) : undefined;
    const claims: Promise<void>[] = [];
    const own = (ref: CheckpointRef) => {
      if (ctx.job.tenant) claims.push(checkpointBytes(store, ref).then((bytes) => claim(store, ctx.job.tenant, "checkpoints", checkpointHex(ref), { bytes })));
    };
    // Outputs are charged as they are written, so a job can take its tenant past the byte
    // quota; at or over it, it writes no more periodic training states (each a full adapter
    // and optimizer state), so its usage cannot grow without bound. Said once in its events.
    let overQuotaSaid = false;
    const keepTrainingState = async (step: number) => {
      if (!ctx.job.tenant || storedBytesQuota <= 0) return true;
      await Promise.all(claims);
      const used = await usageOf(store, ctx.job.tenant);
      if (used < storedBytesQuota) return true;
      if (!overQuotaSaid) {
        overQuotaSaid = true;
        const message = `tenant ${ctx.job.tenant} stores ${used} bytes, at or over its quota of ${storedBytesQuota} (VACCINE_QUOTA_STORED_BYTES): no training state from step ${step} while it is; the job goes on, and resumes from its last one if it stops`;
        ctx.emit({ case: "log", value: { severity: LogSeverity.WARNING, message } });
      }
      return false;
    };
    const result = await trainAdapter(
      store,
      { parent: parentOf(stage, spec), data, method, harmful, lora: loraOf(stage, spec.lora), training: options, guard, checkpointEvery, meta: { job: ctx.job.id } },
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
          own(ref);
          ctx.emit({ case: "checkpointWritten", value: { checkpoint: ref, kind: checkpointKind, step } });
          if (kind === "training-state") ctx.setTrainingState(ref);
        },
        onLog: (message) => ctx.emit({ case: "log", value: { severity: LogSeverity.INFO, message } }),
        keepTrainingState,
      },
      // Every checkpoint written is its tenant's before the job reports an outcome.
    ).finally(() => Promise.all(claims));
    return result && { result, lineage: await lineageOf(store, result) };
  };
}
