/**
 * The dependencies of one process from its configuration: the checkpoint store, the
 * loaded-checkpoint cache and, where a training service runs, the job executor.
 */
import { resolve } from "node:path";
import type { Meter, Tracer } from "@opentelemetry/api";
import type { SuiteDeps } from "../common/deps.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import type { QueueWorker } from "../jobs/queue/queue-worker.ts";
import { folderJobsView, queueJobsView, type JobsView } from "../jobs/jobs-view.ts";
import { jobMemoryLimitMb } from "../jobs/admission.ts";
import type { Logger } from "../platform/log.ts";
import { CheckpointCache } from "../runtime/pipeline/checkpoint-cache.ts";
import { createStore, type StoreConfig } from "../runtime/store/create-store.ts";
import type { Config } from "./config.ts";
import { embeddedExecutor } from "./embedded-executor.ts";
import { queueDeps, type QueueConfig } from "./queue-deps.ts";
import { LocalCheckpointStore } from "../runtime/store/local-store.ts";
import { JOB_SERVICES } from "./services.ts";

export interface ProcessDeps extends SuiteDeps {
  /** Present when a job service (JOB_SERVICES) is served. */
  executor?: JobExecutor;
  /** Present where deletes are served without the job services: to stop at shutdown. */
  jobsView?: JobsView;
  /** Present where queued jobs are trained (VACCINE_QUEUE_URL with VACCINE_ROLE all or worker). */
  jobWorker?: QueueWorker;
}

export function createDeps(
  config: Pick<Config, "store" | "storeRoot" | "s3Bucket" | "s3Prefix" | "s3Endpoint" | "s3Region" | "cacheDir" | "jobsDir" | "maxRunningJobs" | "modelCacheMb" | "maxDatasetMb" | "maxCheckpointMb" | "maxUploadFileMb" | "services"> & Partial<Pick<Config, "jobMemoryLimitMb" | "quotaJobs" | "quotaStoredBytes">> & QueueConfig,
  telemetry: { tracer: Tracer; meter: Meter },
  logger: Logger,
): ProcessDeps {
  // Kept as a value: each training worker thread builds its own store from it.
  const storeConfig: StoreConfig =
    config.store === "s3"
      ? {
          kind: "s3",
          bucket: config.s3Bucket,
          prefix: config.s3Prefix,
          endpoint: config.s3Endpoint || undefined,
          region: config.s3Region,
          forcePathStyle: Boolean(config.s3Endpoint),
          cacheDir: config.cacheDir,
        }
      : { kind: "local", root: config.storeRoot };
  const store = createStore(storeConfig);
  // Writes a crashed process of this host left half done.
  if (store instanceof LocalCheckpointStore) void store.sweepStaging().catch((err: unknown) => logger.warn({ err, root: store.root }, "could not sweep the store's staging folders"));
  // Where checkpoints go: a relative root is the working directory's, which an operator cannot see.
  logger.info(storeConfig.kind === "s3" ? { store: "s3", bucket: storeConfig.bucket, prefix: storeConfig.prefix, cache_dir: resolve(config.cacheDir) } : { store: "local", root: resolve(storeConfig.root) }, "checkpoint store");
  const servesJobs = config.services.some((n) => JOB_SERVICES.has(n));
  // With a queue, api processes enqueue and workers train (queue-deps.ts); without, jobs run here.
  const trains = servesJobs && !config.queueUrl;
  // Per-tenant quotas apply only to authenticated calls (docs/security.md, "Quotas").
  const quotas = { jobs: config.quotaJobs ?? 0, storedBytes: config.quotaStoredBytes ?? 0 };
  // Read as each job starts, from the deps once they exist (a test may change their quotas).
  let deps: ProcessDeps | undefined;
  const storedBytesQuota = () => (deps ? deps.quotas?.storedBytes : quotas.storedBytes) ?? 0;
  const executor = trains ? embeddedExecutor(config, storeConfig, telemetry, logger, storedBytesQuota) : undefined;
  const checkpoints = new CheckpointCache(store, config.modelCacheMb * 2 ** 20);
  const MiB = 2 ** 20;
  const uploads = { maxDatasetBytes: config.maxDatasetMb * MiB, maxCheckpointBytes: config.maxCheckpointMb * MiB, maxFileBytes: config.maxUploadFileMb * MiB };
  const queue = queueDeps(config, servesJobs, storeConfig, telemetry, logger, storedBytesQuota);
  const jobLimit = servesJobs ? jobMemoryLimitMb(config.jobMemoryLimitMb, config.queueUrl ? (config.workerConcurrency ?? 1) : config.maxRunningJobs) : undefined;
  if (jobLimit !== undefined) logger.info({ job_memory_limit_mb: jobLimit }, "job admission limit");
  // Deletes refuse what an unfinished job uses: a process without the job services (a
  // deployment per service) reads the jobs where their executor keeps them.
  const servesDeletes = config.services.some((n) => n === "checkpoints" || n === "datasets");
  const jobsView = servesDeletes && !servesJobs ? (config.queueUrl ? queueJobsView({ url: config.queueUrl, cluster: config.queueCluster }) : folderJobsView(config.jobsDir)) : undefined;
  const jobExecutor = executor ?? queue.executor;
  deps = { store, checkpoints, builtins: {}, executor: jobExecutor, jobs: jobExecutor ?? jobsView, jobsView, jobWorker: queue.worker, uploads, jobMemoryLimitMb: jobLimit, quotas, ...telemetry, logger };
  return deps;
}
