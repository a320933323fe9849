import { alignService } from "../align/service.ts";
import { checkpointService } from "../checkpoints/service.ts";
import { datasetService } from "../datasets/service.ts";
import { embedService } from "../embed/service.ts";
import { fineTuneService } from "../finetune/service.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import type { ServiceModule } from "../platform/server.ts";
import { scoreService } from "../score/service.ts";
import type { ServiceName } from "./config.ts";
import type { ProcessDeps } from "./create-deps.ts";

/** Every service of the suite by its short name (VACCINE_SERVICES, the CLI, the manifests). */
export const SERVICES: Record<ServiceName, (deps: ProcessDeps) => ServiceModule> = {
  align: (deps) => alignService(deps, executorOf(deps)),
  finetune: (deps) => fineTuneService(deps, executorOf(deps)),
  embed: embedService,
  score: scoreService,
  datasets: datasetService,
  checkpoints: checkpointService,
};

/** The services whose calls go to the job executor: their health follows its availability. */
export const JOB_SERVICES: ReadonlySet<ServiceName> = new Set(["align", "finetune"]);

function executorOf(deps: ProcessDeps): JobExecutor {
  if (!deps.executor) throw new Error("job services need an executor: include align or finetune in the process's services");
  return deps.executor;
}
