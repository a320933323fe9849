/**
 * The live events of every Watch an api serves, read on one blocking Redis connection: one
 * XREAD BLOCK over the event streams of all the jobs being watched, each from the last entry
 * its watchers have, the entries handed to each watcher. A watcher whose client has not
 * taken its last batch is left out of the reads until it has, so a client that stops reading
 * holds one batch in memory, not the job's whole history. A Watch used to block on a
 * connection of its own, so an api's Watches took as many Redis clients (400 streams, 400
 * clients) and only VACCINE_MAX_WATCHES bounded them.
 */
import type { JobEvent } from "../../../gen/vaccine/v1/jobs_pb.ts";
import { clusterReady, connectQueue, type QueueRedis, type QueueTarget } from "./connection.ts";
import type { RedisJobs } from "./redis-jobs.ts";

/**
 * How long one read waits for new entries. A Watch that starts meanwhile has its history at
 * once (read apart) and joins the next read, so its first live event waits at most this.
 */
const BLOCK_MS = 500;
/** How long a read waits for a cluster that is finding its nodes again. */
const CLUSTER_WAIT_MS = 1000;

interface Watcher {
  id: string;
  /** The last sequence handed to it. */
  after: number;
  batches: JobEvent[][];
  error?: unknown;
  wake(): void;
}

export class EventStreams {
  private readonly watchers = new Set<Watcher>();
  private conn?: QueueRedis;
  private reading = false;
  private closed = false;
  /** Set while no watcher can take more: the loop waits for one to catch up. */
  private caughtUp?: () => void;

  /** `history` is the api's connection for reads that do not block. */
  constructor(
    private readonly target: QueueTarget,
    private readonly jobs: RedisJobs,
    private readonly history: QueueRedis,
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
    const w: Watcher = { id, after, batches: [], wake: () => {} };
    let wait!: Promise<void>;
    const arm = () => (wait = new Promise((resolve) => (w.wake = resolve)));
    arm();
    const onAbort = () => w.wake();
    signal.addEventListener("abort", onAbort);
    this.watchers.add(w);
    this.read();
    try {
      for (;;) {
        const batch = w.batches.shift();
        if (batch) {
          // Taken: it is read for again (the loop may be waiting for that).
          this.caughtUp?.();
          yield batch;
          continue;
        }
        if (w.error !== undefined) throw w.error;
        if (signal.aborted) return;
        await wait;
        arm();
      }
    } finally {
      this.watchers.delete(w);
      signal.removeEventListener("abort", onAbort);
      this.caughtUp?.();
    }
  }

  /** Ends every watcher's events (their signals say why) and closes the connection. */
  close(): void {
    this.closed = true;
    this.conn?.disconnect();
    this.caughtUp?.();
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
      const ready = [...this.watchers].filter((w) => w.batches.length === 0);
      if (ready.length === 0) {
        await new Promise<void>((resolve) => (this.caughtUp = resolve));
        this.caughtUp = undefined;
        continue;
      }
      // Each job's stream from the earliest entry one of its ready watchers still needs.
      const cursors = new Map<string, number>();
      for (const w of ready) cursors.set(w.id, Math.min(w.after, cursors.get(w.id) ?? Infinity));
      let read: Map<string, JobEvent[]>;
      try {
        await clusterReady(this.conn, CLUSTER_WAIT_MS);
        read = await this.jobs.eventsOf(this.conn, cursors, BLOCK_MS);
      } catch (err) {
        // Every watcher fails as one read does: each Watch ends UNAVAILABLE, and clients resume.
        for (const w of this.watchers) {
          w.error = err;
          w.wake();
        }
        this.watchers.clear();
        return;
      }
      for (const w of ready) {
        const batch = (read.get(w.id) ?? []).filter((e) => e.sequence > w.after);
        if (batch.length === 0) continue;
        w.after = batch.at(-1)!.sequence;
        w.batches.push(batch);
        w.wake();
      }
    }
  }
}
