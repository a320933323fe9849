/**
 * How varied the world's harmful answers and refusals are, per harm category (issue 19:
 * a defence that only learns a handful of answers by heart is not tested by them). Two
 * counts per category over a built-in dataset: distinct texts, and distinct frames, the texts
 * with the request's own words (the category's acts and targets, as the answer phrases them)
 * and the invented words masked, which counts the answers that differ in more than the slots
 * copied from the prompt.
 */
import type { Example } from "../template.ts";
import { HARM_CATEGORIES, type HarmCategory } from "./categories.ts";
import { INVENTED, toSecondPerson } from "./lexicon.ts";

export interface CategoryVariety {
  examples: number;
  distinctTexts: number;
  distinctFrames: number;
}

/** Per category id: the variety of the examples' outputs. */
export function answerVariety(examples: readonly Example[]): Record<string, CategoryVariety> {
  const out: Record<string, CategoryVariety> = {};
  for (const category of HARM_CATEGORIES) {
    const outputs = examples.filter((e) => e.category === category.id).map((e) => e.output);
    const mask = frameMask(category);
    out[category.id] = {
      examples: outputs.length,
      distinctTexts: new Set(outputs).size,
      distinctFrames: new Set(outputs.map((o) => o.replace(mask, "_"))).size,
    };
  }
  return out;
}

/** The request's phrases in every form an answer uses them, longest first, and the invented words. */
function frameMask(c: HarmCategory): RegExp {
  const phrases = new Set<string>(INVENTED);
  for (const p of [...c.acts.flat(), ...c.targets]) {
    phrases.add(p);
    phrases.add(toSecondPerson(p));
    phrases.add(toSecondPerson(p).replace(/^./, (x) => x.toUpperCase()));
  }
  const escaped = [...phrases].sort((a, b) => b.length - a.length).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`\\b(?:${escaped.join("|")})\\b`, "g");
}
