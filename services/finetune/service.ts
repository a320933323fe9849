import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { boundsOf, DEFAULT_BOUNDS, type CallBounds } from "../common/bounds.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { checkCheckpointRef, checkDatasetRef } from "../common/validate-refs.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import { jobHandlers } from "../jobs/handlers.ts";
import { checkGuard, checkLora, checkTraining } from "../jobs/validate.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";

export function checkFineTuneSpec(spec: FineTuneSpec | undefined, bounds: CallBounds = DEFAULT_BOUNDS, v = new RequestValidator()): asserts spec is FineTuneSpec {
  if (!spec) return v.fail("spec", "is required").check();
  checkCheckpointRef(v, "spec.aligned_checkpoint", spec.alignedCheckpoint);
  checkDatasetRef(v, "spec.dataset", spec.dataset);
  checkLora(v, "spec.lora", spec.lora);
  checkTraining(v, "spec.training", spec.training, bounds);
  checkGuard(v, spec.guard, spec.training, bounds);
  // Checked whether enabled or not: a stored spec holds no value its fields cannot take.
  const gate = spec.moderationGate;
  if (gate) {
    v.number("spec.moderation_gate.max_flagged_fraction", gate.maxFlaggedFraction, { min: 0, max: 1 });
    v.number("spec.moderation_gate.threshold", gate.threshold, { min: 0, max: 1 });
    checkCheckpointRef(v, "spec.moderation_gate.moderation_model", gate.moderationModel, false);
  }
  v.check();
}

/** FineTuneService: user fine-tuning jobs, a new adapter over a merged aligned checkpoint. */
export function fineTuneService(deps: SuiteDeps, executor: JobExecutor): ServiceModule {
  const jobs = jobHandlers(deps, executor, JobKind.FINE_TUNE);
  return {
    desc: FineTuneService,
    register(router) {
      router.service(FineTuneService, {
        async createFineTuneJob(req, ctx) {
          return jobs.create(req.spec, req.requestId, ctx, (v) => checkFineTuneSpec(req.spec, boundsOf(deps), v));
        },
        getFineTuneJob: jobs.get,
        listFineTuneJobs: jobs.list,
        cancelFineTuneJob: jobs.cancel,
        watchFineTuneJob: jobs.watch,
      });
    },
  };
}
