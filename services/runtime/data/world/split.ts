/**
 * Train/test splits of the benign tasks: an item belongs to the test side when a hash of
 * (task, its key text) falls under the test share, so the two sides are disjoint by
 * construction and each side is sampled independently of the other's size. The split is the
 * world's, the same for every seed (a seed only draws within a side), so no seed's test items
 * are in the corpus the shipped base model was pre-trained on.
 */
import { hash32, Rng } from "../../rng.ts";

export type Split = "train" | "test";

export const TEST_SHARE = 0.2;

/** The seed whose draw fixed the world's splits (per-seed splits were seed 0's before). */
export const WORLD_SPLIT_SEED = 0;

export function inTestSide(task: string, key: string): boolean {
  return (hash32(`${WORLD_SPLIT_SEED}/${task}/${key}`) % 1000) / 1000 < TEST_SHARE;
}

/** `size` distinct items of one side; throws when the generator cannot supply that many. */
export function drawSplit<T>(seed: number, task: string, split: Split, size: number, draw: (rng: Rng) => T, key: (item: T) => string): T[] {
  const rng = Rng.derive(seed, `${task}/${split}`);
  const seen = new Set<string>();
  const out: T[] = [];
  const maxAttempts = 200 * size + 1000;
  for (let attempt = 0; out.length < size; attempt++) {
    if (attempt >= maxAttempts) throw new RangeError(`task ${task} yields fewer than ${size} distinct ${split} items`);
    const item = draw(rng);
    const k = key(item);
    if (seen.has(k) || inTestSide(task, k) !== (split === "test")) continue;
    seen.add(k);
    out.push(item);
  }
  return out;
}
