/**
 * Comparison against reference arrays with the tolerance the Llama fixtures state:
 * |actual - expected| <= rtol * |expected| + atol, atol = rtol * max|expected| over the
 * array, so values near zero are judged on the array's scale, not their own.
 */

export type NestedNumbers = number | NestedNumbers[];

export interface ScaledComparison {
  /** Values out of tolerance. */
  failures: number;
  count: number;
  /** max |actual - expected| / max|expected|: how close, whatever the verdict. */
  scaledMaxDiff: number;
  /** The worst value (largest excess over its allowance), for the message. */
  worst: { index: number[]; actual: number; expected: number; allowed: number } | null;
}

/** Flattens a nested array in row-major order, keeping each value's index path. */
function flatten(value: NestedNumbers, path: number[] = [], out: { index: number[]; value: number }[] = []) {
  if (Array.isArray(value)) value.forEach((v, i) => flatten(v, [...path, i], out));
  else out.push({ index: path, value });
  return out;
}

function shapeOf(value: NestedNumbers): number[] {
  return Array.isArray(value) ? [value.length, ...(value.length > 0 ? shapeOf(value[0]) : [])] : [];
}

export function compareScaled(actual: NestedNumbers, expected: NestedNumbers, rtol: number): ScaledComparison {
  const a = flatten(actual);
  const e = flatten(expected);
  if (a.length !== e.length || shapeOf(actual).join() !== shapeOf(expected).join()) {
    throw new Error(`shape [${shapeOf(actual)}] does not match the expected [${shapeOf(expected)}]`);
  }
  const scale = Math.max(...e.map((x) => Math.abs(x.value)));
  const atol = rtol * scale;
  let failures = 0;
  let maxDiff = 0;
  let worstExcess = -Infinity;
  let worst: ScaledComparison["worst"] = null;
  e.forEach(({ index, value }, i) => {
    const got = a[i].value;
    const diff = Math.abs(got - value);
    const allowed = rtol * Math.abs(value) + atol;
    // NaN fails: the comparison below is false for it.
    const ok = diff <= allowed;
    if (!ok) failures++;
    maxDiff = Math.max(maxDiff, Number.isNaN(diff) ? Infinity : diff);
    const excess = Number.isNaN(diff) ? Infinity : diff - allowed;
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = { index, actual: got, expected: value, allowed };
    }
  });
  return { failures, count: e.length, scaledMaxDiff: scale === 0 ? maxDiff : maxDiff / scale, worst };
}

/** Largest absolute difference between two equally shaped nested arrays. */
export function maxAbsDiff(a: NestedNumbers, b: NestedNumbers): number {
  const fa = flatten(a);
  const fb = flatten(b);
  if (fa.length !== fb.length) throw new Error(`sizes differ: ${fa.length} and ${fb.length}`);
  return fa.reduce((m, x, i) => Math.max(m, Math.abs(x.value - fb[i].value)), 0);
}
