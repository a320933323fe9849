import { describe, expect, it } from "vitest";
import { generateWorld, type WorldSizes } from "../../services/runtime/data/world/index.ts";
import { Rng } from "../../services/runtime/rng.ts";

const SMALL: WorldSizes = { alignment: 200, harmful: 200, harmfulEval: 100, moderationTrain: 200, moderationTest: 100, taskTrain: 200, taskTest: 100, corpus: 300 };

describe("world determinism", () => {
  it("gives byte-identical JSON for the same seed", () => {
    expect(JSON.stringify(generateWorld(42, SMALL))).toBe(JSON.stringify(generateWorld(42, SMALL)));
  });

  it("differs for another seed, in every split", () => {
    const a = generateWorld(42, SMALL);
    const b = generateWorld(43, SMALL);
    for (const k of ["alignment", "harmful", "harmfulEval", "moderationTrain", "moderationTest", "corpus"] as const) {
      expect(JSON.stringify(a[k])).not.toBe(JSON.stringify(b[k]));
    }
    for (const k of ["sst2", "agnews", "gsm8k"] as const) expect(JSON.stringify(a[k])).not.toBe(JSON.stringify(b[k]));
  });

  it("keeps one split's content independent of another split's size", () => {
    const a = generateWorld(5, SMALL);
    const b = generateWorld(5, { ...SMALL, harmful: 50, corpus: 10 });
    expect(b.alignment).toEqual(a.alignment);
    expect(b.sst2).toEqual(a.sst2);
  });

  it("derives reproducible, independent streams from (seed, purpose)", () => {
    const draw = (r: Rng) => Array.from({ length: 4 }, () => r.int(1000));
    expect(draw(Rng.derive(1, "alignment"))).toEqual(draw(Rng.derive(1, "alignment")));
    expect(draw(Rng.derive(1, "alignment"))).not.toEqual(draw(Rng.derive(1, "harmful")));
    expect(new Rng(3).shuffle([1, 2, 3, 4, 5])).toEqual(new Rng(3).shuffle([1, 2, 3, 4, 5]));
    expect([...new Rng(3).shuffle([1, 2, 3, 4, 5])].sort()).toEqual([1, 2, 3, 4, 5]);
  });
});
