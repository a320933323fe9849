import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import type { FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { notImplemented } from "../platform/errors.ts";
import { jobHandlers } from "../platform/job-handlers.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef, checkLora, checkTraining } from "../platform/validate-training.ts";

export function checkFineTuneSpec(spec: FineTuneSpec | undefined): void {
  const v = new RequestValidator();
  if (!spec) return v.fail("spec", "is required").check();
  checkCheckpointRef(v, "spec.aligned_checkpoint", spec.alignedCheckpoint);
  checkDatasetRef(v, "spec.dataset", spec.dataset);
  checkLora(v, "spec.lora", spec.lora);
  checkTraining(v, "spec.training", spec.training);
  const gate = spec.moderationGate;
  if (gate?.enabled) {
    v.number("spec.moderation_gate.max_flagged_fraction", gate.maxFlaggedFraction, { min: 0, max: 1 });
    v.number("spec.moderation_gate.threshold", gate.threshold, { min: 0, max: 1 });
    checkCheckpointRef(v, "spec.moderation_gate.moderation_model", gate.moderationModel, false);
  }
  v.check();
}

/** FineTuneService: user fine-tuning jobs, a new adapter over a merged aligned checkpoint. */
export function fineTuneService(): ServiceModule {
  const jobs = jobHandlers(FineTuneService.typeName, "FineTune");
  return {
    desc: FineTuneService,
    register(router) {
      router.service(FineTuneService, {
        createFineTuneJob(req) {
          checkFineTuneSpec(req.spec);
          throw notImplemented(`${FineTuneService.typeName}/CreateFineTuneJob`);
        },
        getFineTuneJob: jobs.get,
        listFineTuneJobs: jobs.list,
        cancelFineTuneJob: jobs.cancel,
        watchFineTuneJob: jobs.watch,
      });
    },
  };
}
