/**
 * The distributed half of a process's dependencies, when VACCINE_QUEUE_URL is set: the
 * queue executor where the job RPCs are served (roles all and api), the queue worker that
 * trains (roles all and worker).
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import { QueueExecutor } from "../jobs/queue/queue-executor.ts";
import { QueueWorker } from "../jobs/queue/queue-worker.ts";
import { threadedWork } from "../jobs/threaded-work.ts";
import type { Logger } from "../platform/log.ts";
import type { StoreConfig } from "../runtime/store/create-store.ts";
import type { Config } from "./config.ts";

export type QueueConfig = Partial<Pick<Config, "role" | "queueUrl" | "queueCluster" | "maxWatches" | "workerConcurrency" | "workerLockMs" | "jobAttempts">>;

export function queueDeps(
  config: QueueConfig,
  servesJobs: boolean,
  store: StoreConfig,
  telemetry: { tracer: Tracer; meter: Meter },
  logger: Logger,
  storedBytesQuota: () => number,
): { executor?: QueueExecutor; worker?: QueueWorker } {
  const url = config.queueUrl;
  if (!url) return {};
  const cluster = config.queueCluster;
  const role = config.role ?? "all";
  const executor = servesJobs && role !== "worker" ? new QueueExecutor({ url, cluster, maxWatches: config.maxWatches, ...telemetry, logger }) : undefined;
  const worker =
    role !== "api"
      ? new QueueWorker({
          url,
          cluster,
          concurrency: config.workerConcurrency,
          lockMs: config.workerLockMs,
          maxAttempts: config.jobAttempts,
          ...telemetry,
          logger,
          mapError: (err) => toRpcError(err),
          // In a worker thread each: the event loop that renews the job's lock never trains.
          work: {
            [JobKind.ALIGN]: threadedWork("align", { store, meter: telemetry.meter, storedBytesQuota }),
            [JobKind.FINE_TUNE]: threadedWork("finetune", { store, meter: telemetry.meter, storedBytesQuota }),
          },
        })
      : undefined;
  return { executor, worker };
}
