/**
 * The executor of a process that could not take the jobs folder's lock (jobs-dir-lock.ts):
 * another process runs the jobs there. This one runs none and resumes none; it answers
 * Get, List and Watch from the records on disk (Watch polls the event log until the job is
 * final) and refuses Create and Cancel with FAILED_PRECONDITION / JOB_EXECUTOR_LOCKED:
 * several processes that run jobs need a shared queue (VACCINE_QUEUE_URL).
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import type { Job, JobEvent, JobKind } from "../../gen/vaccine/v1/jobs_pb.ts";
import { rpcError } from "../platform/errors.ts";
import { FINAL, unfinishedOf, visibleTo, type JobExecutor, type JobSpec } from "./executor.ts";
import type { LockHolder } from "./jobs-dir-lock.ts";
import { pageOf } from "./job-pages.ts";
import { jobNotFound } from "./new-job.ts";
import { JobRecords } from "./records.ts";

const POLL_MS = 250;

export class ReadOnlyExecutor implements JobExecutor {
  private readonly records: JobRecords;

  constructor(
    readonly dir: string,
    readonly holder: LockHolder,
  ) {
    this.records = new JobRecords(dir);
  }

  /** Why this process runs no jobs: for the start-up log and every refused call. */
  get reason(): string {
    return (
      `the jobs folder ${this.dir} is locked by process ${this.holder.pid} on ${this.holder.host}` +
      `${this.holder.since ? ` (since ${this.holder.since})` : ""}, which runs its jobs; this process runs none. ` +
      "Several processes that run jobs need a shared queue: set VACCINE_QUEUE_URL, or give each process its own VACCINE_JOBS_DIR"
    );
  }

  async create(_kind: JobKind, _spec: JobSpec): Promise<Job> {
    throw this.locked();
  }

  async cancel(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    this.record(kind, id, tenant);
    throw this.locked();
  }

  async get(kind: JobKind, id: string, tenant?: string): Promise<Job> {
    return this.record(kind, id, tenant).job;
  }

  async list(kind: JobKind, pageSize: number, pageToken: string, tenant?: string): Promise<{ jobs: Job[]; nextPageToken: string }> {
    const mine = this.records.loadAll().map((r) => r.job).filter((j) => j.kind === kind && visibleTo(j, tenant));
    return pageOf(mine, kind, pageSize, pageToken);
  }

  async unfinished(tenant?: string): Promise<Job[]> {
    return unfinishedOf(this.records.loadAll().map((r) => r.job), tenant);
  }

  async *watch(kind: JobKind, id: string, signal: AbortSignal, afterSequence = 0, tenant?: string): AsyncGenerator<JobEvent> {
    let sent = afterSequence;
    // The record turns final just before its last event is appended: one more read gets it.
    for (let finalReads = 0; ; ) {
      const { job, events } = this.record(kind, id, tenant);
      while (sent < events.length) yield events[sent++];
      const last = events.at(-1)?.event;
      const ended = last?.case === "stateChange" && FINAL.has(last.value.to);
      if (signal.aborted || ended || (FINAL.has(job.state) && finalReads++ > 0)) return;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  async shutdown(): Promise<void> {}

  private record(kind: JobKind, id: string, tenant?: string) {
    const record = this.records.load(id);
    if (!record || record.job.kind !== kind || !visibleTo(record.job, tenant)) throw jobNotFound(id);
    return record;
  }

  private locked(): ConnectError {
    return rpcError(Code.FailedPrecondition, "JOB_EXECUTOR_LOCKED", this.reason, {
      jobs_dir: this.dir,
      holder_pid: String(this.holder.pid),
      holder_host: this.holder.host,
    });
  }
}
