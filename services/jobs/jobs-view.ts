/**
 * The unfinished jobs seen by a process that serves deletes (CheckpointService,
 * DatasetService) but not the job services, as a deployment per service has it: read from
 * the records the jobs' executor keeps, in the queue's Redis or in the jobs folder.
 */
import { existsSync } from "node:fs";
import type { UnfinishedJobs } from "../common/deps.ts";
import { unfinishedOf } from "./executor.ts";
import { clusterReady, connectQueue, queueKeys, type QueueTarget } from "./queue/connection.ts";
import { unavailable } from "./queue/queue-executor.ts";
import { RedisJobs } from "./queue/redis-jobs.ts";
import { JobRecords } from "./records.ts";

export interface JobsView extends UnfinishedJobs {
  shutdown(): Promise<void>;
}

/** Jobs recorded in the queue's Redis (VACCINE_QUEUE_URL); UNAVAILABLE while it cannot be reached. */
export function queueJobsView(target: QueueTarget & { prefix?: string }): JobsView {
  // A delete fails after a few reconnection attempts instead of hanging while Redis is down.
  const redis = connectQueue(target, 3);
  const jobs = new RedisJobs(redis, queueKeys(target.prefix, target.cluster));
  return {
    async unfinished(tenant) {
      try {
        await clusterReady(redis);
        return await jobs.unfinished(tenant);
      } catch (err) {
        throw unavailable(err);
      }
    },
    shutdown: async () => void (await redis.quit().catch(() => redis.disconnect())),
  };
}

/** Jobs recorded in a jobs folder by the embedded executor of another process on this volume. */
export function folderJobsView(dir: string): JobsView {
  return {
    async unfinished(tenant) {
      // Not made here: this process runs no jobs, and no folder means none recorded.
      if (!existsSync(dir)) return [];
      return unfinishedOf(new JobRecords(dir).loadAll().map((r) => r.job), tenant);
    },
    shutdown: async () => {},
  };
}
