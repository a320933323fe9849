import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { boundsOf, DEFAULT_BOUNDS, type CallBounds } from "../common/bounds.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { checkCheckpointRef, checkDatasetRef } from "../common/validate-refs.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import { jobHandlers } from "../jobs/handlers.ts";
import { checkLora, checkTraining } from "../jobs/validate.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkAlignMethod } from "./method-checks.ts";

export function checkAlignSpec(spec: AlignSpec | undefined, bounds: CallBounds = DEFAULT_BOUNDS, v = new RequestValidator()): asserts spec is AlignSpec {
  if (!spec) return v.fail("spec", "is required").check();
  checkCheckpointRef(v, "spec.base_checkpoint", spec.baseCheckpoint);
  checkDatasetRef(v, "spec.dataset", spec.dataset);
  checkAlignMethod(v, spec.method);
  checkLora(v, "spec.lora", spec.lora);
  checkTraining(v, "spec.training", spec.training, bounds);
  v.check();
}

/** AlignService: alignment jobs (SFT, Vaccine or a defence of docs/defences.md) over a base checkpoint. */
export function alignService(deps: SuiteDeps, executor: JobExecutor): ServiceModule {
  const jobs = jobHandlers(deps, executor, JobKind.ALIGN);
  return {
    desc: AlignService,
    register(router) {
      router.service(AlignService, {
        async createAlignJob(req, ctx) {
          return jobs.create(req.spec, req.requestId, ctx, (v) => checkAlignSpec(req.spec, boundsOf(deps), v));
        },
        getAlignJob: jobs.get,
        listAlignJobs: jobs.list,
        cancelAlignJob: jobs.cancel,
        watchAlignJob: jobs.watch,
      });
    },
  };
}
