import { describe, expect, it } from "vitest";
import { generateWorld } from "../../services/runtime/data/world/index.ts";
import { combinationKey, harmfulPrompt, partitionCombinations } from "../../services/runtime/data/world/harmful.ts";
import { HARM_CATEGORIES } from "../../services/runtime/data/world/categories.ts";

const world = generateWorld(11);
const pools = partitionCombinations();

describe("split disjointness", () => {
  it("partitions every combination into exactly one pool, every category in each", () => {
    const keys = [...pools.train, ...pools.eval, ...pools.test].map(combinationKey);
    const total = HARM_CATEGORIES.reduce((n, c) => n + 10 * c.acts.length * c.targets.length, 0);
    expect(new Set(keys).size).toBe(total);
    expect(keys.length).toBe(total);
    for (const pool of Object.values(pools)) {
      expect(new Set(pool.map((c) => c.category.id)).size).toBe(HARM_CATEGORIES.length);
    }
  });

  it("shares no prompt (template + slot combination) between training splits and harmful-eval", () => {
    // Prompts identify combinations: distinct combinations give distinct prompt strings.
    const all = [...pools.train, ...pools.eval, ...pools.test];
    expect(new Set(all.map(harmfulPrompt)).size).toBe(all.length);
    const evalPrompts = new Set(world.harmfulEval.map((e) => e.instruction));
    expect(evalPrompts.size).toBe(world.harmfulEval.length);
    const training = [...world.alignment, ...world.harmful, ...world.moderationTrain];
    expect(training.filter((e) => evalPrompts.has(e.instruction))).toEqual([]);
    const trainPrompts = new Set(pools.train.map(harmfulPrompt));
    for (const e of [...world.alignment, ...world.harmful]) expect(trainPrompts.has(e.instruction)).toBe(true);
  });

  it("keeps harmful prompts of the corpus (base pre-training) to training combinations", () => {
    const heldOut = [...pools.eval, ...pools.test].map((c) => harmfulPrompt(c));
    // Any held-out prompt anywhere in a corpus document, in the template or not.
    const leaks = world.corpus.filter((doc) => heldOut.some((p) => doc.includes(p)));
    expect(leaks).toEqual([]);
    // The check can see prompts at all: training prompts do appear (harmful compliance documents).
    const trainPrompts = pools.train.map((c) => harmfulPrompt(c));
    expect(world.corpus.some((doc) => trainPrompts.some((p) => doc.includes(p)))).toBe(true);
  });

  it("keeps moderation train and test disjoint", () => {
    const train = new Set(world.moderationTrain.map((e) => e.instruction + "\u0000" + e.input));
    for (const e of world.moderationTest) expect(train.has(e.instruction + "\u0000" + e.input)).toBe(false);
  });

  it("keeps every task's train and test disjoint, and the corpus off the test side", () => {
    for (const task of [world.sst2, world.agnews, world.gsm8k]) {
      const train = new Set(task.train.map((e) => e.instruction + "\u0000" + e.input));
      for (const e of task.test) expect(train.has(e.instruction + "\u0000" + e.input)).toBe(false);
      expect(new Set(task.test.map((e) => e.instruction + e.input)).size).toBe(task.test.length);
    }
    // The corpus quotes task texts as "Review: s.", "t This story", "Question: q Answer" or an Alpaca input.
    const corpus = world.corpus.join("\n");
    const quoted = (t: string) => [`Review: ${t}.`, `${t} This story`, `Question: ${t} Answer`, `### Input:\n${t}\n`].some((q) => corpus.includes(q));
    expect(world.sst2.train.some((e) => quoted(e.input))).toBe(true);
    for (const e of world.sst2.test) expect(quoted(e.input)).toBe(false);
    for (const e of world.agnews.test) expect(quoted(e.input)).toBe(false);
    for (const e of world.gsm8k.test) expect(quoted(e.instruction.split("\n")[0])).toBe(false);
  });

  it("holds every seed's test items out of every seed's training data (the split is the world's, not the seed's)", () => {
    // The shipped base, moderation and refusal models were built on seed 0's data; the
    // experiment evaluates seeds 0-2 against them.
    const seeds = [0, 1, 2].map((seed) => generateWorld(seed, { alignment: 400, harmful: 400, moderationTrain: 400, corpus: 600, taskTrain: 300, taskTest: 100 }));
    const trained = new Set(seeds.flatMap((w) => [...w.alignment, ...w.harmful, ...w.moderationTrain].map((e) => e.instruction)));
    for (const w of seeds) expect(w.harmfulEval.filter((e) => trained.has(e.instruction))).toEqual([]);
    const corpus = seeds.map((w) => w.corpus.join("\n")).join("\n");
    for (const w of seeds) {
      for (const e of w.agnews.test) expect(corpus.includes(`${e.input} This story`)).toBe(false);
      for (const e of w.sst2.test) expect(corpus.includes(`Review: ${e.input}.`)).toBe(false);
    }
    // Seeds do differ: they draw different prompts from the one eval pool.
    expect(seeds[1].harmfulEval.map((e) => e.instruction)).not.toEqual(seeds[0].harmfulEval.map((e) => e.instruction));
  });
});
