import { describe, expect, it } from "vitest";
import { generateWorld, type WorldSizes } from "../../services/runtime/data/world/index.ts";
import { Rng } from "../../services/runtime/data/world/random.ts";

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

  it("the PRNG is the canonical mulberry32 sequence", () => {
    const r = new Rng(1);
    expect([r.next(), r.next()].map((x) => x.toFixed(8))).toEqual(["0.62707394", "0.00273572"]);
    expect(new Rng(3).shuffle([1, 2, 3, 4, 5])).toEqual(new Rng(3).shuffle([1, 2, 3, 4, 5]));
  });
});
