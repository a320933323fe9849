/**
 * Metrics of the queue and its workers (beside JOB_METRICS of jobs/executor.ts, which the
 * queue executor records too: vaccine.jobs.finished).
 */
import type { Meter } from "@opentelemetry/api";
import type { Queue } from "bullmq";

export const QUEUE_METRICS = {
  /** Gauge: jobs in the queue by vaccine.queue.state (waiting, active, delayed); every process reports the same shared numbers. */
  jobs: "vaccine.queue.jobs",
  /** Histogram (s): one run of a job on a worker, by vaccine.job.kind and vaccine.job.outcome (succeeded, failed, cancelled, requeued, retried, lost). */
  runDuration: "vaccine.queue.job.duration",
  /** Counter: worker processes started, by vaccine.worker.id; a rise without a scale-up is a restart. */
  workerStarts: "vaccine.worker.starts",
  /** Counter: jobs resumed by a worker after the previous one was lost mid-job (killed, crashed, lock expired). */
  takeovers: "vaccine.queue.job.takeovers",
  /** Counter: training steps run, by vaccine.worker.id. */
  steps: "vaccine.worker.steps",
  /** Gauge ({step}/s): steps per second of this worker over the last minute, by vaccine.worker.id. */
  stepRate: "vaccine.worker.step_rate",
} as const;

/** Observes the queue's counts on each collection (asynchronously, one Redis round trip). */
export function observeQueue(meter: Meter, queue: Queue): void {
  meter.createObservableGauge(QUEUE_METRICS.jobs, { description: "Jobs in the shared queue by state" }).addCallback(async (result) => {
    try {
      const counts = await queue.getJobCounts("waiting", "active", "delayed");
      for (const [state, n] of Object.entries(counts)) result.observe(n, { "vaccine.queue.state": state });
    } catch {
      // Redis unreachable: no points this round, rather than a failed collection.
    }
  });
}

/** Steps over a sliding window, for the steps/s gauge. */
export class StepRate {
  private readonly times: number[] = [];

  constructor(private readonly windowMs = 60_000) {}

  add(now = Date.now()): void {
    this.times.push(now);
    this.trim(now);
  }

  perSecond(now = Date.now()): number {
    this.trim(now);
    return this.times.length / (this.windowMs / 1000);
  }

  private trim(now: number): void {
    while (this.times.length > 0 && this.times[0] < now - this.windowMs) this.times.shift();
  }
}
