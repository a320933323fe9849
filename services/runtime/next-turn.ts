/**
 * Long synchronous tensor work (decoding, forward passes over many texts, training steps)
 * run in pieces, with the event loop served between them, so the serving thread answers
 * other calls, deadlines and cancels meanwhile. A piece is one step of a generator that
 * yields between them.
 */

/** Resolves on the next turn of the event loop, after pending timers and I/O callbacks. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Runs every step at once. */
export function runSteps<T>(steps: Generator<void, T, void>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Runs the steps with a turn of the event loop between them; once `signal` has aborted no
 * further step runs, the generator's own finally runs (freeing what it holds), and the
 * promise rejects with the signal's reason.
 */
export async function runStepsServed<T>(steps: Generator<void, T, void>, signal?: AbortSignal): Promise<T> {
  try {
    for (;;) {
      signal?.throwIfAborted();
      const r = steps.next();
      if (r.done) return r.value;
      await nextTurn();
    }
  } finally {
    steps.return(undefined as T);
  }
}
