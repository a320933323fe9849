/**
 * The live events of every Watch an api serves, read on one blocking Redis connection: one
 * XREAD BLOCK over the event streams of all the jobs being watched, each from the last entry
 * read for its watchers, the entries handed to each watcher. A watcher holds at most one
 * batch: while its client has not taken it, what is read for it is dropped, and its client,
 * once it takes the batch, reads what it missed apart (non-blocking, from the last event it
 * was given). So a client that stops reading holds one batch in memory, not the job's whole
 * history, and every watcher stays in the blocking read, so none waits for a read it is not
 * in. A Watch used to block on a connection of its own, so an api's Watches took as many
 * Redis clients (400 streams, 400 clients) and only VACCINE_MAX_WATCHES bounded them.
 */
import type { JobEvent } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { clusterReady, connectQueue, type QueueRedis, type QueueTarget } from "./connection.ts";
import type { RedisJobs } from "./redis-jobs.ts";

/**
 * How long one read waits for new entries. A Watch that starts meanwhile has its history at
 * once (read apart) and joins the next read, so its first live event waits at most this.
 */
const BLOCK_MS = 500;

interface Watcher {
  id: string;
  /** The last sequence handed to it (its batch included). */
  given: number;
  /** The last sequence read for it; beyond `given` while it held a batch and entries were dropped. */
  read: number;
  batch?: JobEvent[];
  error?: unknown;
  wake(): void;
}

export class EventStreams {
  private readonly watchers = new Set<Watcher>();
  private conn?: QueueRedis;
  private reading = false;
  private closed = false;

  /** `history` is the api's connection for reads that do not block. */
  constructor(
    private readonly target: QueueTarget,
    private readonly jobs: RedisJobs,
    private readonly history: QueueRedis,
    private readonly blockMs = BLOCK_MS,
  ) {}

  /**
   * Job `id`'s events after sequence `after`, a batch at a time: first those stored, then
   * each new batch, until `signal` aborts. Throws what a read threw (Redis away).
   */
  async *events(id: string, after: number, signal: AbortSignal): AsyncGenerator<JobEvent[]> {
    const stored = await this.jobs.events(this.history, id, after);
    if (stored.length > 0) {
      after = stored.at(-1)!.sequence;
      yield stored;
    }
    if (signal.aborted || this.closed) return;
    const w: Watcher = { id, given: after, read: after, wake: () => {} };
    let wait!: Promise<void>;
    const arm = () => (wait = new Promise((resolve) => (w.wake = resolve)));
    arm();
    const onAbort = () => w.wake();
    signal.addEventListener("abort", onAbort);
    this.watchers.add(w);
    this.read();
    try {
      for (;;) {
        if (w.batch) {
          const batch = w.batch;
          w.batch = undefined;
          yield batch;
          continue;
        }
        if (w.error !== undefined) throw w.error;
        if (signal.aborted) return;
        if (w.read > w.given) {
          // Dropped while its batch waited: read apart, up to 1000 at a time.
          const missed = await this.jobs.events(this.history, id, w.given);
          if (missed.length > 0) {
            w.given = missed.at(-1)!.sequence;
            w.read = Math.max(w.read, w.given);
            yield missed;
          }
          continue;
        }
        await wait;
        arm();
      }
    } finally {
      this.watchers.delete(w);
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Ends every watcher's events (their signals say why) and closes the connection. */
  close(): void {
    this.closed = true;
    this.conn?.disconnect();
    for (const w of this.watchers) w.wake();
  }

  /** Reads while anyone watches; one loop at a time. */
  private read(): void {
    if (this.reading || this.closed) return;
    this.reading = true;
    void this.loop().finally(() => {
      this.reading = false;
      // A watcher that came as the loop found none.
      if (this.watchers.size > 0) this.read();
    });
  }

  private async loop(): Promise<void> {
    this.conn ??= connectQueue(this.target, 3);
    while (this.watchers.size > 0 && !this.closed) {
      // Each job's stream from the earliest entry read for one of its watchers.
      const cursors = new Map<string, number>();
      for (const w of this.watchers) cursors.set(w.id, Math.min(w.read, cursors.get(w.id) ?? Infinity));
      let read: Map<string, JobEvent[]>;
      try {
        await clusterReady(this.conn);
        read = await this.jobs.eventsOf(this.conn, cursors, this.blockMs);
      } catch (err) {
        // Every watcher fails as one read does: each Watch ends UNAVAILABLE, and clients resume.
        for (const w of this.watchers) {
          w.error = err;
          w.wake();
        }
        this.watchers.clear();
        return;
      }
      for (const w of this.watchers) {
        const entries = (read.get(w.id) ?? []).filter((e) => e.sequence > w.read);
        if (entries.length === 0) continue;
        w.read = entries.at(-1)!.sequence;
        // Its client has not taken the last batch, or is reading what was dropped: dropped too.
        if (w.batch || w.given < entries[0].sequence - 1) continue;
        w.batch = entries;
        w.given = w.read;
        w.wake();
      }
    }
  }
}
