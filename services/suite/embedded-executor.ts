/**
 * The executor of embedded mode (no VACCINE_QUEUE_URL): jobs in this process, each trained in
 * its own worker thread, if this process gets the jobs folder's lock. A second process on the
 * same folder gets a read-only executor instead and says so at start, so that no job runs twice.
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import { lockJobsDir } from "../jobs/jobs-dir-lock.ts";
import { LocalExecutor } from "../jobs/local-executor.ts";
import { ReadOnlyExecutor } from "../jobs/read-only-executor.ts";
import { threadedWork } from "../jobs/threaded-work.ts";
import type { Logger } from "../platform/log.ts";
import type { StoreConfig } from "../runtime/store/create-store.ts";
import type { Config } from "./config.ts";

export function embeddedExecutor(
  config: Pick<Config, "jobsDir" | "maxRunningJobs">,
  store: StoreConfig,
  telemetry: { tracer: Tracer; meter: Meter },
  logger: Logger,
): JobExecutor {
  const attempt = lockJobsDir(config.jobsDir);
  if ("heldBy" in attempt) {
    const executor = new ReadOnlyExecutor(config.jobsDir, attempt.heldBy);
    logger.warn({ jobs_dir: config.jobsDir, holder_pid: attempt.heldBy.pid, holder_host: attempt.heldBy.host }, `this process runs no training jobs: ${executor.reason}`);
    return executor;
  }
  return new LocalExecutor({
    dir: config.jobsDir,
    maxRunning: config.maxRunningJobs,
    tracer: telemetry.tracer,
    meter: telemetry.meter,
    logger,
    mapError: (err) => toRpcError(err),
    lock: attempt.lock,
    work: {
      [JobKind.ALIGN]: threadedWork("align", { store, meter: telemetry.meter }),
      [JobKind.FINE_TUNE]: threadedWork("finetune", { store, meter: telemetry.meter }),
    },
  });
}
