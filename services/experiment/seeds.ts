/**
 * Aggregation over seeds: every grid point runs once per seed, and the report gives the mean
 * and the standard deviation (population: the seeds are the whole sample the report speaks of,
 * and one seed gives 0 rather than no number).
 */
export const mean = (xs: readonly number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

export const sd = (xs: readonly number[]): number => (xs.length > 1 ? Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2))) : 0);

/** A step count per seed, or "held" when the event never happened within the run. */
export type StepsOrHeld = number | "held";

export interface StepsOverSeeds {
  perSeed: StepsOrHeld[];
  /** Seeds in which the event happened. */
  reached: number;
  /** Mean and sd over the seeds in which it happened (NaN when none did). */
  mean: number;
  sd: number;
}

export function aggregateSteps(perSeed: readonly StepsOrHeld[]): StepsOverSeeds {
  const steps = perSeed.filter((s): s is number => s !== "held");
  return { perSeed: [...perSeed], reached: steps.length, mean: mean(steps), sd: sd(steps) };
}

/**
 * One table cell: "held" when no seed reached the event; else the mean (± sd over the seeds
 * that reached it, and how many of them did, when there are several seeds) and every seed's
 * value, so a mean over 2 of 3 seeds is never read as a mean over 3.
 */
export function formatSteps(a: StepsOverSeeds): string {
  const n = a.perSeed.length;
  if (n === 0) return "n/a";
  if (a.reached === 0) return "held";
  if (n === 1) return String(a.perSeed[0]);
  const of = a.reached < n ? `, ${a.reached}/${n} seeds` : "";
  return `${a.mean.toFixed(0)} ± ${a.sd.toFixed(0)}${of} (${a.perSeed.join(", ")})`;
}
