/** Statistics the benches share. */

/** The median; of an even count, the mean of the middle two. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2;
}

/** The q-quantile of xs (nearest rank). */
export const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

/** Latencies in ms as the benches report them: p50, p90 and p99 to 0.1 ms, and the count. */
export function latencies(ms: number[]) {
  const r = (x: number) => Number(x.toFixed(1));
  return { p50Ms: r(quantile(ms, 0.5)), p90Ms: r(quantile(ms, 0.9)), p99Ms: r(quantile(ms, 0.99)), calls: ms.length };
}

/** Each call's duration in ms, `calls` of them one after another. */
export async function timedCalls(calls: number, call: () => Promise<unknown>): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < calls; i++) {
    const s = performance.now();
    await call();
    ms.push(performance.now() - s);
  }
  return ms;
}
