import { alignService } from "./align/service.ts";
import { embedService } from "./embed/service.ts";
import { fineTuneService } from "./finetune/service.ts";
import type { ServiceName } from "./platform/config.ts";
import type { SuiteDeps } from "./platform/deps.ts";
import type { ServiceModule } from "./platform/server.ts";
import { scoreService } from "./score/service.ts";

/** Every service of the suite by its short name (VACCINE_SERVICES, the CLI, the manifests). */
export const SERVICES: Record<ServiceName, (deps: SuiteDeps) => ServiceModule> = {
  align: alignService,
  finetune: fineTuneService,
  embed: embedService,
  score: scoreService,
};
