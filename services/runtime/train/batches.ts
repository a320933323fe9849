/**
 * Data order as a pure function of (seed, step): epoch e is a seeded permutation of the
 * examples, cut into batches of batchSize (the last one may be short, as a PyTorch
 * DataLoader without drop_last). Resuming at step k therefore needs only k.
 */
import { Rng } from "../rng.ts";

export function batchesPerEpoch(n: number, batchSize: number): number {
  return Math.ceil(n / batchSize);
}

/** A seeded Fisher–Yates permutation of 0..n-1 for one epoch. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  const rng = new Rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ (epoch + 1)) >>> 0);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Example indices of the batch of 0-based step `step`, and its epoch. */
export function batchAt(n: number, batchSize: number, seed: number, step: number): { epoch: number; indices: number[] } {
  const perEpoch = batchesPerEpoch(n, batchSize);
  const epoch = Math.floor(step / perEpoch);
  const start = (step % perEpoch) * batchSize;
  return { epoch, indices: epochOrder(n, seed, epoch).slice(start, start + batchSize) };
}
