/**
 * A sum over threads through shared memory, the same on every thread: each writes its values
 * to its own slot, waits for the others at a barrier (Atomics), then adds the slots up in
 * thread order, so every thread gets bit-identical float32 sums with nobody in between.
 * Sums alternate between two halves of the slots: a thread can be at most one sum ahead of
 * another (the barrier), so it never overwrites values another is still reading. Values beyond
 * the slots' capacity go in several rounds.
 */

/** What the threads share; made by sharedSumBuffers and handed to each thread. */
export interface SharedSumBuffers {
  threads: number;
  /** Values of one thread in one round. */
  capacity: number;
  /** Int32: arrivals at the barrier, the barrier's generation, the abort flag. */
  control: SharedArrayBuffer;
  /** Float32: 2 halves x threads x capacity. */
  slots: SharedArrayBuffer;
}

const ARRIVED = 0;
const GENERATION = 1;
const ABORTED = 2;

export function sharedSumBuffers(threads: number, capacity: number): SharedSumBuffers {
  return {
    threads,
    capacity,
    control: new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT),
    slots: new SharedArrayBuffer(2 * threads * capacity * Float32Array.BYTES_PER_ELEMENT),
  };
}

/** A sum that cannot complete: another thread failed and abortSharedSum released this one. */
export class PeerFailedError extends Error {
  override readonly name = "PeerFailedError";
  constructor() {
    super("data-parallel step aborted: another training thread failed");
  }
}

/** Releases every thread waiting in a sum (they throw PeerFailedError); the sums cannot be used again. */
export function abortSharedSum(buffers: SharedSumBuffers): void {
  const control = new Int32Array(buffers.control);
  Atomics.store(control, ABORTED, 1);
  // A new generation as well: a thread between its abort check and its wait does not sleep.
  Atomics.add(control, GENERATION, 1);
  Atomics.notify(control, GENERATION);
}

export class SharedSum {
  private readonly control: Int32Array;
  private readonly slots: Float32Array;
  private round = 0;

  constructor(
    private readonly buffers: SharedSumBuffers,
    private readonly rank: number,
  ) {
    this.control = new Int32Array(buffers.control);
    this.slots = new Float32Array(buffers.slots);
  }

  /** The element-wise sum over all threads of the values each passes (every thread passes as many). */
  sum(values: ArrayLike<number>): Float32Array {
    const { threads, capacity } = this.buffers;
    const own = values instanceof Float32Array ? values : Float32Array.from(values);
    const out = new Float32Array(own.length);
    for (let start = 0; start < own.length; start += capacity) {
      const n = Math.min(capacity, own.length - start);
      const half = (this.round++ % 2) * threads * capacity;
      this.slots.set(own.subarray(start, start + n), half + this.rank * capacity);
      this.barrier();
      out.set(this.slots.subarray(half, half + n), start);
      for (let r = 1; r < threads; r++) {
        const slot = half + r * capacity;
        for (let i = 0; i < n; i++) out[start + i] += this.slots[slot + i];
      }
    }
    return out;
  }

  /** Waits until every thread has arrived (a generation-counting barrier). */
  private barrier(): void {
    const c = this.control;
    const generation = Atomics.load(c, GENERATION);
    if (Atomics.add(c, ARRIVED, 1) === this.buffers.threads - 1) {
      Atomics.store(c, ARRIVED, 0);
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
    } else {
      while (Atomics.load(c, GENERATION) === generation) {
        if (Atomics.load(c, ABORTED)) throw new PeerFailedError();
        Atomics.wait(c, GENERATION, generation);
      }
    }
    if (Atomics.load(c, ABORTED)) throw new PeerFailedError();
  }
}
