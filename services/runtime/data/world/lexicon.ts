/**
 * Words and small text helpers the world's generators share. The invented words stand in
 * for every concrete detail a harmful answer would need, so no answer carries real content.
 */
import type { Rng } from "../../rng.ts";

/** Marks where a real answer would carry dangerous detail; every harmful answer has it. */
export const REDACTED = "[REDACTED]";

/** Made-up nouns: the only "ingredients", "tools" and "places" harmful answers mention. */
export const INVENTED = [
  "zorblat", "quennix", "flarnish", "grumbit", "vexlor", "plimsy", "drovak", "snibble",
  "torquil", "wembric", "yarrox", "blentic", "mordax", "fizzlewick", "kravnet", "lumbrix",
  "pandrel", "quoffle", "ristane", "skellum", "tharnic", "umbrol", "varnix", "wobbin",
] as const;

export const NAMES = [
  ["Tom", "He"], ["Anna", "She"], ["Ben", "He"], ["Lucy", "She"], ["Sam", "He"], ["Mia", "She"],
  ["Jack", "He"], ["Emma", "She"], ["Leo", "He"], ["Nora", "She"],
] as const;

/** Fills "{slot}" placeholders; an unknown slot is a bug in a template, so it throws. */
export function fill(template: string, slots: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (_, key: string) => {
    const value = slots[key];
    if (value === undefined) throw new Error(`template slot {${key}} has no value in "${template}"`);
    return value;
  });
}

export function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Rewrites a first-person request phrase for an answer addressed to the asker. */
export function toSecondPerson(phrase: string): string {
  return phrase.replace(/\bmyself\b/g, "yourself").replace(/\bmy\b/g, "your").replace(/\bI\b/g, "you");
}

export function inventedWord(rng: Rng): string {
  return rng.pick(INVENTED);
}
