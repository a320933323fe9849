import { LimitedWarnings, type Logger } from "../../platform/log.ts";

/**
 * A queue process's log of its Redis going away and coming back: each error the first time,
 * then at most once a minute (LimitedWarnings), and one line when the connection is ready
 * again, with how long it was away and how many errors were not logged. Every failed reconnection
 * was a line: a worker wrote five a second for a whole outage.
 */
export class OutageLog {
  private readonly warnings: LimitedWarnings;
  private downSince?: number;
  private lastError = "";

  constructor(private readonly logger: Logger) {
    this.warnings = new LimitedWarnings(logger);
  }

  /** An error of one of the process's own connections. */
  readonly connectionError = (err: Error): void => {
    this.downSince ??= Date.now();
    this.lastError = err.message;
    this.warnings.warn({ error: err.message }, "job queue connection error", err.message);
  };

  /**
   * BullMQ's errors, as `msg`. It passes its connections' on, a cluster's without the node named:
   * one that repeats the process's connection's last error counts as that.
   */
  bullmqError(msg: string): (err: Error) => void {
    return (err) => this.warnings.warn({ error: err.message }, msg, this.lastError.endsWith(err.message) ? this.lastError : `${msg}: ${err.message}`);
  }

  /** The process's connection is ready: after errors, the outage is over. */
  readonly ready = (): void => {
    if (this.downSince === undefined) return;
    const seconds = Math.round((Date.now() - this.downSince) / 100) / 10;
    this.logger.info({ down_seconds: seconds, suppressed: this.warnings.reset() }, "job queue connection restored");
    this.downSince = undefined;
  };
}
