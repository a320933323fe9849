/**
 * Distinct harmful answers and refusals per harm category of the built-in world (issue 19),
 * over the default-size built-in "harmful" and "alignment" datasets (2000 each, seed 0): the
 * distinct texts and the distinct frames (texts with the request's words and the invented
 * words masked; services/runtime/data/world/variety.ts). Writes bench/results/world-variety.json.
 * Run: npx tsx bench/world-variety.ts
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { DEFAULT_SIZES } from "../services/runtime/data/world/index.ts";
import { answerVariety } from "../services/runtime/data/world/variety.ts";

const examples = (name: string, size: number) => {
  const built = loadBuiltin(name, { size, seed: 0 });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};
const harmful = answerVariety(examples("harmful", DEFAULT_SIZES.harmful));
const refusals = answerVariety(examples("alignment", DEFAULT_SIZES.alignment));
console.log("| category | harmful: examples / distinct texts / distinct frames | refusals: examples / distinct texts / distinct frames |");
console.log("| --- | --- | --- |");
for (const id of Object.keys(harmful)) {
  const [h, r] = [harmful[id], refusals[id]];
  console.log(`| ${id} | ${h.examples} / ${h.distinctTexts} / ${h.distinctFrames} | ${r.examples} / ${r.distinctTexts} / ${r.distinctFrames} |`);
}
mkdirSync("bench/results", { recursive: true });
const out = { date: new Date().toISOString(), seed: 0, sizes: { harmful: DEFAULT_SIZES.harmful, alignment: DEFAULT_SIZES.alignment }, harmful, refusals };
writeFileSync("bench/results/world-variety.json", JSON.stringify(out, null, 2) + "\n");
