/**
 * The user fine-tuning mix of the reference: int(p*n) harmful + int((1-p)*n) benign
 * examples (floor each, so the total can be n - 1), shuffled with a seed. Pools that are
 * too small are refused rather than sampled with replacement, so no example repeats.
 */
import { Rng } from "../rng.ts";

export interface MixOptions<T> {
  benign: readonly T[];
  harmful: readonly T[];
  n: number;
  /** Harmful ratio in [0, 1]. */
  p: number;
  seed: number;
}

export class MixtureError extends Error {
  constructor(
    message: string,
    readonly field: "n" | "p" | "benign" | "harmful" | "seed",
  ) {
    super(message);
    this.name = "MixtureError";
  }
}

/** Counts of the mix: floor(p*n) harmful and floor((1-p)*n) benign, as the reference. */
export function mixCounts(n: number, p: number): { harmful: number; benign: number } {
  // The same IEEE products Python's int() truncates, float noise included (int(0.29 * 100) == 28).
  return { harmful: Math.floor(p * n), benign: Math.floor((1 - p) * n) };
}

/** Picks from each pool (a seeded draw without replacement), then shuffles the union. */
export function mix<T>({ benign, harmful, n, p, seed }: MixOptions<T>): T[] {
  if (!Number.isInteger(n) || n < 0) throw new MixtureError(`n must be a non-negative integer, got ${n}`, "n");
  if (!(p >= 0 && p <= 1)) throw new MixtureError(`p must be in [0, 1], got ${p}`, "p");
  if (!Number.isInteger(seed)) throw new MixtureError(`seed must be an integer, got ${seed}`, "seed");
  const counts = mixCounts(n, p);
  if (counts.harmful > harmful.length) {
    throw new MixtureError(`the mix needs ${counts.harmful} harmful examples, the pool has ${harmful.length}`, "harmful");
  }
  if (counts.benign > benign.length) {
    throw new MixtureError(`the mix needs ${counts.benign} benign examples, the pool has ${benign.length}`, "benign");
  }
  const rng = Rng.derive(seed, "mix");
  const chosen = [...rng.shuffle(harmful).slice(0, counts.harmful), ...rng.shuffle(benign).slice(0, counts.benign)];
  return rng.shuffle(chosen);
}
