/**
 * Resolves on the next turn of the event loop, after pending timers and I/O callbacks: long
 * synchronous tensor work (decoding, forward passes over many texts, training steps) awaits
 * it between pieces, so the serving thread answers other calls, deadlines and cancels meanwhile.
 */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
