/**
 * Safety mixing, a fine-tuning guard (docs/defences.md#fine-tuning-guards): refusal examples
 * added to the user's data. The count rounds to nearest (halves up) rather than flooring as
 * the user mix does (mixture.ts), so float noise in fraction * n (0.29 * 100 = 28.999...)
 * cannot drop an example. The examples are taken from a seeded permutation of the pool,
 * repeated when the pool is smaller than the count; the training loop shuffles the union.
 */
import { Rng } from "../rng.ts";

/** How many refusal examples a mix adds to n user examples. */
export function safetyMixCount(n: number, fraction: number): number {
  return Math.floor(fraction * n + 0.5);
}

/** The user's examples followed by safetyMixCount(user.length, fraction) examples of the pool. */
export function safetyMix<T>(user: readonly T[], pool: readonly T[], fraction: number, seed: number): T[] {
  if (!(fraction >= 0 && fraction <= 1)) throw new RangeError(`fraction must be in [0, 1], got ${fraction}`);
  const count = safetyMixCount(user.length, fraction);
  if (count === 0) return [...user];
  if (pool.length === 0) throw new RangeError(`the mix needs ${count} alignment examples and the alignment dataset is empty`);
  const order = Rng.derive(seed, "safety-mix").shuffle(pool);
  return [...user, ...Array.from({ length: count }, (_, i) => order[i % order.length])];
}
