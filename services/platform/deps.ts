/**
 * What the service handlers share in one process: the checkpoint store, the job executor
 * (only where a training service runs), telemetry and the logger.
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { BuiltinRefs } from "../runtime/pipeline/builtins.ts";
import { CheckpointCache } from "../runtime/pipeline/checkpoint-cache.ts";
import { createStore } from "../runtime/store/create-store.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";
import type { Config } from "./config.ts";
import { JobExecutor } from "./jobs/executor.ts";
import type { Logger } from "./log.ts";
import { toRpcError } from "./runtime-errors.ts";
import { trainingWork } from "./training-jobs.ts";

export interface SuiteDeps {
  store: CheckpointStore;
  /** Loaded checkpoints for Embed and Score. */
  checkpoints: CheckpointCache;
  /** Refs of the shipped checkpoints once seeded into the store (see seedBuiltins). */
  builtins: BuiltinRefs;
  /** Present when align or finetune is served. */
  executor?: JobExecutor;
  tracer: Tracer;
  meter: Meter;
  logger: Logger;
}

export function createDeps(
  config: Pick<Config, "store" | "storeRoot" | "s3Bucket" | "s3Prefix" | "s3Endpoint" | "s3Region" | "cacheDir" | "jobsDir" | "maxRunningJobs" | "modelCacheMb" | "services">,
  telemetry: { tracer: Tracer; meter: Meter },
  logger: Logger,
): SuiteDeps {
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
    ? new JobExecutor({
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
  return { store, checkpoints, builtins: {}, executor, ...telemetry, logger };
}
