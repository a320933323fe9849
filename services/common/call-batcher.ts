/**
 * Dynamic batching of concurrent calls: calls with the same key that arrive within a short
 * window go to one run (one forward pass over all their rows instead of one per call), which
 * answers each call on its own. A call keeps its own outcome, deadline and cancellation: an
 * error of its own fails it alone, and a caller that gives up leaves the batch (or, once the
 * batch runs, stops waiting for it) without touching the others.
 */

export interface BatchWindow {
  /** How long the first call of a batch waits for others, in ms; 0 runs every call alone. */
  windowMs: number;
  /** Rows (texts, pairs) one batch may hold: a full batch runs at once, and a larger call alone. */
  maxRows: number;
}

export const DEFAULT_BATCH_WINDOW: BatchWindow = { windowMs: 2, maxRows: 128 };

/** The batch window of a process: its configured one, or the default. */
export function batchWindowOf(deps: { batching?: BatchWindow }): BatchWindow {
  return deps.batching ?? DEFAULT_BATCH_WINDOW;
}

/** What a run gives one call. */
export type Outcome<R> = { value: R } | { error: unknown };

interface Entry<C, R> {
  call: C;
  rows: number;
  settle(outcome: Outcome<R>): void;
  settled: boolean;
  /** Told when the entry settles: its run stops once every entry of it has. */
  onSettled?(): void;
}

interface Open<C, R> {
  entries: Entry<C, R>[];
  rows: number;
  timer: NodeJS.Timeout;
}

export class CallBatcher<C, R> {
  private readonly open = new Map<string, Open<C, R>>();

  /**
   * `run` answers the calls of one batch, in order (it may also throw: every call of the
   * batch then fails with that error); its signal aborts once every caller of the batch has
   * given up, so it can stop early. `onRun` is told how many calls each run answers.
   */
  constructor(
    private readonly window: BatchWindow,
    private readonly run: (calls: C[], signal: AbortSignal) => Promise<Outcome<R>[]>,
    private readonly onRun: (calls: number) => void = () => {},
  ) {}

  /** The call's answer, from a run shared with the other calls of `key` that arrive within the window. */
  call(key: string, call: C, rows: number, signal?: AbortSignal): Promise<R> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<R>((resolve, reject) => {
      const onAbort = () => {
        this.leave(key, entry);
        entry.settle({ error: signal!.reason });
      };
      const entry: Entry<C, R> = {
        call,
        rows,
        settled: false,
        settle: (outcome) => {
          if (entry.settled) return;
          entry.settled = true;
          signal?.removeEventListener("abort", onAbort);
          if ("value" in outcome) resolve(outcome.value);
          else reject(outcome.error);
          entry.onSettled?.();
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      if (this.window.windowMs === 0 || rows >= this.window.maxRows) return this.start([entry]);
      let batch = this.open.get(key);
      if (batch && batch.rows + rows > this.window.maxRows) {
        this.flush(key, batch);
        batch = undefined;
      }
      if (!batch) {
        const fresh: Open<C, R> = { entries: [], rows: 0, timer: setTimeout(() => this.flush(key, fresh), this.window.windowMs) };
        this.open.set(key, (batch = fresh));
      }
      batch.entries.push(entry);
      batch.rows += rows;
      if (batch.rows >= this.window.maxRows) this.flush(key, batch);
    });
  }

  /** Takes a caller that gave up out of its batch while the batch still waits. */
  private leave(key: string, entry: Entry<C, R>): void {
    const batch = this.open.get(key);
    if (!batch?.entries.includes(entry)) return;
    batch.entries = batch.entries.filter((e) => e !== entry);
    batch.rows -= entry.rows;
    if (batch.entries.length === 0) {
      clearTimeout(batch.timer);
      this.open.delete(key);
    }
  }

  private flush(key: string, batch: Open<C, R>): void {
    clearTimeout(batch.timer);
    if (this.open.get(key) === batch) this.open.delete(key);
    if (batch.entries.length > 0) this.start(batch.entries);
  }

  private start(entries: Entry<C, R>[]): void {
    this.onRun(entries.length);
    const abandoned = new AbortController();
    let ran = false;
    for (const e of entries) {
      e.onSettled = () => {
        if (!ran && entries.every((x) => x.settled)) abandoned.abort(new Error("every caller of the batch gave up"));
      };
    }
    this.run(entries.map((e) => e.call), abandoned.signal).then(
      (outcomes) => ((ran = true), entries.forEach((e, i) => e.settle(outcomes[i]))),
      (error: unknown) => ((ran = true), entries.forEach((e) => e.settle({ error }))),
    );
  }
}
