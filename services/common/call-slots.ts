import { trace } from "@opentelemetry/api";

/** The bound unless VACCINE_INFERENCE_CONCURRENCY says otherwise (config.ts). */
export const DEFAULT_INFERENCE_CONCURRENCY = 2;

/**
 * A bound on how many long inference calls (Score's decoding, Embed's drift) run at once in
 * a process; the others wait in arrival order. Decoding is synchronous work on the serving
 * thread that hands the event loop back between tokens: every call decoding at once adds a
 * step to each turn of the loop, so 32 of them made every other call (an Embed) wait 32 steps
 * per turn. One thread decodes no faster for running calls side by side, so the bound costs
 * no throughput.
 */
export class CallSlots {
  private running = 0;
  private readonly waiting: { start(): void; onAbort(): void }[] = [];

  constructor(readonly limit: number) {
    if (!(Number.isInteger(limit) && limit >= 1)) throw new Error(`CallSlots: limit must be a positive integer, got ${limit}`);
  }

  /** Calls waiting for a slot now. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Runs `fn` once a slot is free; a call whose signal aborts while it waits leaves the line
   * and rejects with the signal's reason (its deadline or cancel), taking no slot.
   */
  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.take(signal);
    try {
      return await fn();
    } finally {
      this.release();
    }
  }

  /** A stream's items once a slot is free, the slot held until the stream ends or its reader stops. */
  async *stream<T>(items: () => AsyncGenerator<T>, signal?: AbortSignal): AsyncGenerator<T> {
    await this.take(signal);
    try {
      yield* items();
    } finally {
      this.release();
    }
  }

  private take(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (this.running < this.limit) {
      this.running++;
      return Promise.resolve();
    }
    // The wait shows on the call's span, for whoever traces a slow call.
    const span = trace.getActiveSpan();
    const [since, ahead] = [performance.now(), this.waiting.length];
    return new Promise<void>((resolve, reject) => {
      const entry = {
        start: () => {
          signal?.removeEventListener("abort", entry.onAbort);
          this.running++;
          span?.addEvent("waited for a slot", { "vaccine.slots.limit": this.limit, "vaccine.slots.ahead": ahead, "vaccine.slots.wait_ms": Math.round(performance.now() - since) });
          resolve();
        },
        onAbort: () => {
          this.waiting.splice(this.waiting.indexOf(entry), 1);
          reject(signal!.reason);
        },
      };
      signal?.addEventListener("abort", entry.onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  private release(): void {
    this.running--;
    this.waiting.shift()?.start();
  }
}
