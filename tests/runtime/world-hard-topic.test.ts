// The harder topic task (agnews-hard, issue 19): deterministic, its splits disjoint and apart
// from AGNEWS's, written in words the shipped base model's tokenizer holds whole, its label set
// by the first phrase alone, and scored by the AGNEWS rule that ScoreTask infers for it.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BASE_MODEL_DIR } from "../../services/runtime/base-model.ts";
import { loadBuiltin } from "../../services/runtime/data/builtin.ts";
import { formatPrompt, type Example } from "../../services/runtime/data/template.ts";
import { generateWorld } from "../../services/runtime/data/world/index.ts";
import { TOPIC_VOCABULARY, TOPICS } from "../../services/runtime/data/world/topic.ts";
import { parseTaskAnswer } from "../../services/runtime/eval/task-parsers.ts";
import { inferTask } from "../../services/runtime/pipeline/scoring.ts";
import { loadTokenizer, wordTokenizerConfig } from "../../services/runtime/tokenizer.ts";

const load = (name: string, split: "train" | "test", size: number, seed = 0, harmfulRatio?: number): Example[] => {
  const built = loadBuiltin(name, { split, size, seed, harmfulRatio });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};
const train = load("agnews-hard", "train", 2000);
const test = load("agnews-hard", "test", 500);

describe("agnews-hard", () => {
  it("is deterministic in the seed, and a split does not depend on the other's size", () => {
    expect(load("agnews-hard", "train", 2000)).toEqual(train);
    expect(load("agnews-hard", "test", 100)).toEqual(test.slice(0, 100));
    expect(load("agnews-hard", "train", 50, 1)).not.toEqual(train.slice(0, 50));
  });

  it("keeps train and test disjoint, and shares no article with AGNEWS", () => {
    const trainTexts = new Set(train.map((e) => e.input));
    expect(trainTexts.size).toBe(train.length);
    expect(new Set(test.map((e) => e.input)).size).toBe(test.length);
    expect(test.filter((e) => trainTexts.has(e.input))).toEqual([]);
    const world = generateWorld(0);
    const easy = new Set([...world.agnews.train, ...world.agnews.test].map((e) => e.input));
    expect([...train, ...test].filter((e) => easy.has(e.input))).toEqual([]);
    // The base model's corpus quotes AGNEWS articles; none of the held-out hard ones.
    const corpus = world.corpus.join("\n");
    expect(test.filter((e) => corpus.includes(e.input))).toEqual([]);
  });

  it("labels by the first phrase, the other words from any topic, every label about as often", () => {
    for (const e of train) {
      const own = TOPIC_VOCABULARY[e.output as (typeof TOPICS)[number]];
      const lead = e.input.toLowerCase();
      expect([...own.actors, ...own.objects].some((p) => lead.startsWith(p) || lead.startsWith(`the ${p}`)), e.input).toBe(true);
    }
    for (const t of TOPICS) expect(train.filter((e) => e.output === t).length).toBeGreaterThan(400);
    // Most articles carry a verb from a topic other than their label's: the rest of the words mislead.
    const foreignVerb = train.filter((e) => !TOPIC_VOCABULARY[e.output as (typeof TOPICS)[number]].verbs.some((v) => e.input.includes(` ${v} `)));
    expect(foreignVerb.length).toBeGreaterThan(train.length / 2);
  });

  it("uses only whole words of the shipped base model's tokenizer", () => {
    const json = JSON.parse(readFileSync(join(BASE_MODEL_DIR, "tokenizer.json"), "utf8"));
    const tokenizer = loadTokenizer(json, wordTokenizerConfig());
    const byId = new Map(Object.entries(json.model.vocab as Record<string, number>).map(([k, v]) => [v, k]));
    for (const e of [...train, ...test]) {
      const pieces = tokenizer.encode(formatPrompt(e) + e.output).map((id) => byId.get(id)!);
      expect(pieces.filter((p) => p.startsWith("##") || p === "<unk>"), e.input).toEqual([]);
    }
  });

  it("is scored by the AGNEWS rule: ScoreTask infers it, gold answers count, other labels do not", () => {
    for (const e of test.slice(0, 50)) {
      expect(inferTask(e)).toBe("agnews");
      expect(parseTaskAnswer("agnews", e.output, e.gold!)).toEqual({ predicted: e.gold, correct: true, strictCorrect: true });
      const wrong = TOPICS.find((t) => t !== e.gold)!;
      expect(parseTaskAnswer("agnews", wrong, e.gold!)).toEqual({ predicted: wrong, correct: false, strictCorrect: false });
    }
  });

  it("mixes with harmful examples like the other tasks (agnews-hard-mix)", () => {
    const mix = load("agnews-hard-mix", "train", 200, 0, 0.1);
    expect(mix).toHaveLength(200);
    expect(mix.filter((e) => e.harmful).length).toBe(20);
    // The benign part is the task's first 180 train articles, shuffled in.
    expect(new Set(mix.filter((e) => !e.harmful).map((e) => e.input))).toEqual(new Set(train.slice(0, 180).map((e) => e.input)));
  });
});
