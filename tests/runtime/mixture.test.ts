import { describe, expect, it } from "vitest";
import { mix, mixCounts, MixtureError } from "../../services/runtime/data/mixture.ts";

const pool = (tag: string, n: number) => Array.from({ length: n }, (_, i) => `${tag}${i}`);
const benign = pool("b", 1000);
const harmful = pool("h", 300);

describe("mix", () => {
  it.each([
    [1000, 0.1, 100, 900],
    [1000, 0.01, 10, 990],
    [1000, 0.05, 50, 950],
    [1000, 0.2, 200, 800],
    [1000, 0, 0, 1000],
    [100, 0.29, 28, 71], // Python: int(0.29 * 100) == 28, int(0.71 * 100) == 71
    [7, 0.5, 3, 3],
  ])("n=%i p=%f gives %i harmful + %i benign", (n, p, h, b) => {
    expect(mixCounts(n, p)).toEqual({ harmful: h, benign: b });
    const out = mix({ benign, harmful, n, p, seed: 1 });
    expect(out.filter((x) => x.startsWith("h")).length).toBe(h);
    expect(out.filter((x) => x.startsWith("b")).length).toBe(b);
    expect(new Set(out).size).toBe(out.length);
  });

  it("is deterministic in the seed and shuffles", () => {
    const a = mix({ benign, harmful, n: 200, p: 0.1, seed: 4 });
    expect(mix({ benign, harmful, n: 200, p: 0.1, seed: 4 })).toEqual(a);
    expect(mix({ benign, harmful, n: 200, p: 0.1, seed: 5 })).not.toEqual(a);
    // Harmful examples are spread through the order, not grouped at the front.
    expect(a.slice(0, 20).every((x) => x.startsWith("h"))).toBe(false);
    expect(a.slice(100).some((x) => x.startsWith("h"))).toBe(true);
  });

  it("refuses pools that are too small and bad settings", () => {
    expect(() => mix({ benign, harmful: pool("h", 5), n: 100, p: 0.1, seed: 1 })).toThrow(/needs 10 harmful examples, the pool has 5/);
    expect(() => mix({ benign: pool("b", 5), harmful, n: 100, p: 0.1, seed: 1 })).toThrow(MixtureError);
    for (const bad of [{ n: -1, p: 0.1 }, { n: 1.5, p: 0.1 }, { n: 10, p: 1.2 }, { n: 10, p: Number.NaN }]) {
      expect(() => mix({ benign, harmful, ...bad, seed: 1 })).toThrow(MixtureError);
    }
  });
});
