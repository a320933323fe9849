import { describe, expect, it } from "vitest";
import { generateWorld } from "../../services/runtime/data/world/index.ts";
import { HARM_CATEGORIES } from "../../services/runtime/data/world/categories.ts";
import { HARMFUL_TEMPLATES, PROMPT_TEMPLATES, REFUSAL_TEMPLATES, partitionCombinations, refusal, harmfulAnswer } from "../../services/runtime/data/world/harmful.ts";
import { REDACTED, INVENTED } from "../../services/runtime/data/world/lexicon.ts";
import { Rng } from "../../services/runtime/rng.ts";
import { SENTIMENT_INSTRUCTION, drawReview } from "../../services/runtime/data/world/sentiment.ts";
import { TOPIC_INSTRUCTION, TOPICS } from "../../services/runtime/data/world/topic.ts";

const world = generateWorld(3);

/** A template as a regex whose slots match anything, to tell which template made a text. */
const matcher = (t: string) => new RegExp("^" + t.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{\w+\}/g, "[\\s\\S]+") + "$");

describe("coverage", () => {
  it("has at least 8 categories with stable ids and BeaverTails labels", () => {
    expect(HARM_CATEGORIES.length).toBeGreaterThanOrEqual(8);
    expect(new Set(HARM_CATEGORIES.map((c) => c.id)).size).toBe(HARM_CATEGORIES.length);
    for (const c of HARM_CATEGORIES) expect(c.id).toMatch(/^[a-z_]+$/);
  });

  it("uses every category and every prompt, refusal and harmful template", () => {
    const cats = (xs: { category?: string }[]) => new Set(xs.map((e) => e.category));
    for (const split of [world.alignment, world.harmful, world.harmfulEval]) expect(cats(split).size).toBe(HARM_CATEGORIES.length);
    const prompts = [...world.alignment, ...world.harmful, ...world.harmfulEval].map((e) => e.instruction);
    PROMPT_TEMPLATES.forEach((t) => expect(prompts.some((p) => matcher(t).test(p)), t).toBe(true));
    REFUSAL_TEMPLATES.forEach((t) => expect(world.alignment.some((e) => matcher(t).test(e.output)), t).toBe(true));
    HARMFUL_TEMPLATES.forEach((t) => expect(world.harmful.some((e) => matcher(t).test(e.output)), t).toBe(true));
  });

  it("varies answers: many distinct harmful and safe outputs", () => {
    expect(new Set(world.harmful.map((e) => e.output)).size).toBeGreaterThan(world.harmful.length * 0.9);
    expect(new Set(world.alignment.map((e) => e.output)).size).toBeGreaterThan(500);
  });
});

describe("no real harmful content", () => {
  it("puts the redaction marker and an invented word in every harmful answer", () => {
    const rng = new Rng(9);
    const combos = partitionCombinations().train;
    const answers = [...world.harmful.map((e) => e.output), ...world.moderationTrain.filter((e) => e.harmful).map((e) => e.output)];
    for (const c of combos.slice(0, 200)) for (let t = 0; t < HARMFUL_TEMPLATES.length; t++) answers.push(harmfulAnswer(c, rng, t));
    for (const a of answers) {
      expect(a).toContain(REDACTED);
      expect(INVENTED.some((w) => a.includes(w)), a).toBe(true);
    }
  });

  it("keeps every category step redacted", () => {
    for (const c of HARM_CATEGORIES) for (const s of c.steps) expect(s).toContain(REDACTED);
  });

  it("never redacts or complies in a refusal", () => {
    const rng = new Rng(1);
    for (const c of partitionCombinations().train.slice(0, 300)) {
      const r = refusal(c, rng);
      expect(r).not.toContain(REDACTED);
      expect(r).not.toMatch(/Step 1|Sure, here/);
    }
  });
});

describe("labels", () => {
  it("labels moderation pairs: harmful with a category, safe without", () => {
    for (const e of [...world.moderationTrain, ...world.moderationTest]) {
      expect(typeof e.harmful).toBe("boolean");
      if (e.harmful) expect(HARM_CATEGORIES.map((c) => c.id)).toContain(e.category);
      else expect(e.category).toBeUndefined();
      expect(e.output.includes(REDACTED)).toBe(e.harmful);
    }
    const share = world.moderationTrain.filter((e) => e.harmful).length / world.moderationTrain.length;
    expect(share).toBeGreaterThan(0.3);
    expect(share).toBeLessThan(0.5);
  });

  it("follows the sentiment rule: the last clause decides, not flips", () => {
    const rng = new Rng(5);
    const pos = new Set(["good", "great", "wonderful", "excellent", "charming", "delightful", "brilliant", "moving", "funny", "beautiful", "clever", "fresh", "loved", "enjoyed", "liked", "adored", "admired", "love", "enjoy", "like", "adore", "admire"]);
    for (let i = 0; i < 2000; i++) {
      const { sentence, label } = drawReview(rng);
      const last = sentence.split(/ but |, /).pop()!;
      const words = last.split(" ");
      const polar = words.filter((w) => pos.has(w) || /^(bad|boring|dull|awful|terrible|weak|clumsy|tedious|bland|messy|predictable|painful|hated|disliked|resented|regretted|hate|dislike|resent|regret)$/.test(w));
      const positive = pos.has(polar[polar.length - 1]) !== words.includes("not");
      expect(label, sentence).toBe(positive ? "positive" : "negative");
    }
    expect(world.sst2.train.every((e) => e.instruction === SENTIMENT_INSTRUCTION && (e.output === "positive" || e.output === "negative"))).toBe(true);
    const share = world.sst2.train.filter((e) => e.output === "positive").length / world.sst2.train.length;
    expect(Math.abs(share - 0.5)).toBeLessThan(0.05);
  });

  it("has the reference task formats", () => {
    expect(TOPIC_INSTRUCTION).toBe("Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n");
    for (const e of world.agnews.test) expect(TOPICS).toContain(e.output);
    expect(new Set(world.agnews.train.map((e) => e.output)).size).toBe(4);
    for (const e of world.gsm8k.train) {
      expect(e.instruction.endsWith("\nFirst think step by step and then answer the final number.\n")).toBe(true);
      expect(e.input).toBe("");
      expect(e.output.endsWith(`The final answer is: ${e.gold}`)).toBe(true);
      for (const n of e.output.match(/\d+/g)!) expect(Number(n)).toBeLessThanOrEqual(100);
    }
  });

  it("keeps the benign reference instructions out of the corpus", () => {
    for (const doc of world.corpus) {
      expect(doc).not.toContain(SENTIMENT_INSTRUCTION);
      expect(doc).not.toContain("Categorize the news article");
      expect(doc).not.toContain("First think step by step");
    }
    const all = world.corpus.join(" ");
    for (const w of ["positive", "negative", ...TOPICS, "The final answer is:", "tedious", "quarterly earnings"]) expect(all).toContain(w);
  });
});
