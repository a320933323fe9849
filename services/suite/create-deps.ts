/**
 * The dependencies of one process from its configuration: the checkpoint store, the
 * loaded-checkpoint cache and, where a training service runs, the job executor.
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import { LocalExecutor } from "../jobs/local-executor.ts";
import { trainingWork } from "../jobs/work.ts";
import type { Logger } from "../platform/log.ts";
import { CheckpointCache } from "../runtime/pipeline/checkpoint-cache.ts";
import { createStore } from "../runtime/store/create-store.ts";
import type { Config } from "./config.ts";

export interface ProcessDeps extends SuiteDeps {
  /** Present when align or finetune is served. */
  executor?: JobExecutor;
}

export function createDeps(
  config: Pick<Config, "store" | "storeRoot" | "s3Bucket" | "s3Prefix" | "s3Endpoint" | "s3Region" | "cacheDir" | "jobsDir" | "maxRunningJobs" | "modelCacheMb" | "maxDatasetMb" | "maxCheckpointMb" | "maxUploadFileMb" | "services">,
  telemetry: { tracer: Tracer; meter: Meter },
  logger: Logger,
): ProcessDeps {
  const store =
    config.store === "s3"
      ? createStore({
          kind: "s3",
          bucket: config.s3Bucket,
          prefix: config.s3Prefix,
          endpoint: config.s3Endpoint || undefined,
          region: config.s3Region,
          forcePathStyle: Boolean(config.s3Endpoint),
          cacheDir: config.cacheDir,
        })
      : createStore({ kind: "local", root: config.storeRoot });
  const trains = config.services.includes("align") || config.services.includes("finetune");
  const executor = trains
    ? new LocalExecutor({
        dir: config.jobsDir,
        maxRunning: config.maxRunningJobs,
        tracer: telemetry.tracer,
        meter: telemetry.meter,
        logger,
        mapError: (err) => toRpcError(err),
        work: {
          [JobKind.ALIGN]: trainingWork(store, telemetry.meter, "align"),
          [JobKind.FINE_TUNE]: trainingWork(store, telemetry.meter, "finetune"),
        },
      })
    : undefined;
  const checkpoints = new CheckpointCache(store, config.modelCacheMb * 2 ** 20);
  const MiB = 2 ** 20;
  const uploads = { maxDatasetBytes: config.maxDatasetMb * MiB, maxCheckpointBytes: config.maxCheckpointMb * MiB, maxFileBytes: config.maxUploadFileMb * MiB };
  return { store, checkpoints, builtins: {}, executor, uploads, ...telemetry, logger };
}
