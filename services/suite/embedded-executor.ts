/**
 * The executor of embedded mode (no VACCINE_QUEUE_URL): jobs in this process, each trained in
 * its own worker thread, if this process gets the jobs folder's lock. A second process on the
 * same folder gets a read-only executor instead and says so at start, so that no job runs twice;
 * it takes the lock over once its holder is gone (stopped, or dead) and runs the jobs from then.
 */
import type { Meter, Tracer } from "@opentelemetry/api";
import { JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { toRpcError } from "../common/runtime-errors.ts";
import type { JobExecutor } from "../jobs/executor.ts";
import { HEARTBEAT_MS, lockJobsDir, type JobsDirLock } from "../jobs/jobs-dir-lock.ts";
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
  storedBytesQuota: () => number,
): JobExecutor {
  const local = (lock: JobsDirLock) =>
    new LocalExecutor({
      dir: config.jobsDir,
      maxRunning: config.maxRunningJobs,
      tracer: telemetry.tracer,
      meter: telemetry.meter,
      logger,
      mapError: (err) => toRpcError(err),
      lock,
      work: {
        [JobKind.ALIGN]: threadedWork("align", { store, meter: telemetry.meter, storedBytesQuota }),
        [JobKind.FINE_TUNE]: threadedWork("finetune", { store, meter: telemetry.meter, storedBytesQuota }),
      },
    });
  const attempt = lockJobsDir(config.jobsDir);
  if ("lock" in attempt) return local(attempt.lock);
  const readOnly = new ReadOnlyExecutor(config.jobsDir, attempt.heldBy);
  logger.warn({ jobs_dir: config.jobsDir, holder_pid: attempt.heldBy.pid, holder_host: attempt.heldBy.host }, `this process runs no training jobs: ${readOnly.reason}`);
  return new TakeoverExecutor(readOnly, HEARTBEAT_MS, () => {
    const again = lockJobsDir(config.jobsDir);
    if ("heldBy" in again) return undefined;
    logger.info({ jobs_dir: config.jobsDir }, "took over the jobs folder's lock: this process runs its jobs now");
    return local(again.lock);
  });
}

/**
 * The read-only executor until `takeOver` gets the jobs folder's lock (asked every `retryMs`),
 * then the embedded one it returns, which resumes the jobs the holder left: a process started
 * beside another (a rolling restart on one volume) does not stay without jobs once it is gone.
 * A Watch begun before reads the same records, so it goes on.
 */
class TakeoverExecutor implements JobExecutor {
  private current: JobExecutor;
  private readonly timer: NodeJS.Timeout;
  private readonly listeners = new Set<(available: boolean, why?: string) => void>();

  constructor(readOnly: ReadOnlyExecutor, retryMs: number, takeOver: () => JobExecutor | undefined) {
    this.current = readOnly;
    this.timer = setInterval(() => {
      const local = takeOver();
      if (!local) return;
      clearInterval(this.timer);
      this.current = local;
      for (const listener of this.listeners) listener(true);
    }, retryMs);
    this.timer.unref();
  }

  /** Unavailable (Create refused) until the lock is taken over. */
  watchAvailability(listener: (available: boolean, why?: string) => void): () => void {
    this.listeners.add(listener);
    if (this.current instanceof ReadOnlyExecutor) listener(false, `another process holds the jobs folder ${this.current.dir}`);
    else listener(true);
    return () => this.listeners.delete(listener);
  }

  create(...args: Parameters<JobExecutor["create"]>) {
    return this.current.create(...args);
  }
  get(...args: Parameters<JobExecutor["get"]>) {
    return this.current.get(...args);
  }
  list(...args: Parameters<JobExecutor["list"]>) {
    return this.current.list(...args);
  }
  unfinished(...args: Parameters<JobExecutor["unfinished"]>) {
    return this.current.unfinished(...args);
  }
  cancel(...args: Parameters<JobExecutor["cancel"]>) {
    return this.current.cancel(...args);
  }
  watch(...args: Parameters<JobExecutor["watch"]>) {
    return this.current.watch(...args);
  }
  async shutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.current.shutdown();
  }
}
