// The world's harmful answers and refusals are varied in every harm category (issue 19), above
// floors measured at seed 0 with the default sizes (bench/world-variety.ts prints the table).
import { describe, expect, it } from "vitest";
import { loadBuiltin } from "../../services/runtime/data/builtin.ts";
import { HARM_CATEGORIES } from "../../services/runtime/data/world/categories.ts";
import { REFUSAL_TEMPLATES } from "../../services/runtime/data/world/harmful.ts";
import { DEFAULT_SIZES } from "../../services/runtime/data/world/index.ts";
import { answerVariety } from "../../services/runtime/data/world/variety.ts";

/**
 * Per category, over 2000 examples of each set (about 140 per category). Harmful answers:
 * nearly every one differs beyond the request's words (119 to 157 frames measured). Refusals:
 * 83 to 110 distinct texts, and 23 or 24 of the 24 frames the refusal templates allow
 * (templates with both a reason and an alternative: 4 frames each, the others 2).
 */
const FLOORS = { harmfulFrames: 100, refusalTexts: 75, refusalFrames: 20 };

const examples = (name: string, size: number) => {
  const built = loadBuiltin(name, { size, seed: 0 });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};

describe("answer variety per harm category", () => {
  const harmful = answerVariety(examples("harmful", DEFAULT_SIZES.harmful));
  const refusals = answerVariety(examples("alignment", DEFAULT_SIZES.alignment));

  it("counts every category, every example once", () => {
    expect(Object.keys(harmful)).toEqual(HARM_CATEGORIES.map((c) => c.id));
    expect(Object.values(harmful).reduce((s, v) => s + v.examples, 0)).toBe(DEFAULT_SIZES.harmful);
    expect(Object.values(refusals).reduce((s, v) => s + v.examples, 0)).toBe(DEFAULT_SIZES.alignment);
  });

  it("stays above the floors", () => {
    for (const id of Object.keys(harmful)) {
      expect(harmful[id].distinctFrames, id).toBeGreaterThanOrEqual(FLOORS.harmfulFrames);
      expect(refusals[id].distinctTexts, id).toBeGreaterThanOrEqual(FLOORS.refusalTexts);
      expect(refusals[id].distinctFrames, id).toBeGreaterThanOrEqual(FLOORS.refusalFrames);
    }
  });

  it("masks the request's words: frames are fewer than texts, and no more than the templates allow", () => {
    const allowed = REFUSAL_TEMPLATES.reduce((n, t) => n + (t.includes("{reason}") ? 2 : 1) * (t.includes("{alternative}") ? 2 : 1), 0);
    expect(allowed).toBe(24);
    for (const id of Object.keys(refusals)) {
      expect(refusals[id].distinctFrames).toBeLessThanOrEqual(allowed);
      expect(refusals[id].distinctFrames).toBeLessThan(refusals[id].distinctTexts);
    }
  });
});
