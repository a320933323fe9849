/**
 * The built-in synthetic benchmark: one entry point for every split, deterministic in
 * the seed (each split draws from its own derived generator, so sizes of one split do
 * not change another's content).
 */
import { formatPrompt, type Example } from "../template.ts";
import { ARITHMETIC_SUFFIX, arithmeticExamples } from "./arithmetic.ts";
import { HARM_CATEGORIES } from "./categories.ts";
import { corpusTexts } from "./corpus.ts";
import {
  alignmentExamples, harmfulEvalPrompts, harmfulExamples, harmfulAnswer, harmfulPrompt,
  partitionCombinations, refusal, HARMFUL_TEMPLATES, REFUSAL_TEMPLATES,
} from "./harmful.ts";
import { moderationExamples } from "./moderation.ts";
import { Rng } from "../../rng.ts";
import { sentimentExamples } from "./sentiment.ts";
import { topicExamples } from "./topic.ts";
import { hardTopicExamples } from "./topic-hard.ts";

export interface WorldSizes {
  alignment: number;
  harmful: number;
  harmfulEval: number;
  moderationTrain: number;
  moderationTest: number;
  taskTrain: number;
  taskTest: number;
  corpus: number;
}

/** The reference's scale where it has one (2000 alignment, 500 evaluation prompts). */
export const DEFAULT_SIZES: WorldSizes = {
  alignment: 2000,
  harmful: 2000,
  harmfulEval: 500,
  moderationTrain: 4000,
  moderationTest: 1000,
  taskTrain: 2000,
  taskTest: 500,
  corpus: 6000,
};

export interface World {
  seed: number;
  alignment: Example[];
  harmful: Example[];
  harmfulEval: Example[];
  moderationTrain: Example[];
  moderationTest: Example[];
  sst2: { train: Example[]; test: Example[] };
  agnews: { train: Example[]; test: Example[] };
  gsm8k: { train: Example[]; test: Example[] };
  corpus: string[];
}

/** Generators per builtin dataset, so one dataset can be built without the rest. */
export const worldParts = {
  alignment: (seed: number, size: number) => alignmentExamples(partitionCombinations().train, size, Rng.derive(seed, "alignment")),
  harmful: (seed: number, size: number) => harmfulExamples(partitionCombinations().train, size, Rng.derive(seed, "harmful")),
  harmfulEval: (seed: number, size: number) => harmfulEvalPrompts(partitionCombinations().eval, size, Rng.derive(seed, "harmful-eval")),
  moderation: (seed: number, split: "train" | "test", size: number) =>
    moderationExamples(seed, split, partitionCombinations()[split === "train" ? "train" : "test"], size, Rng.derive(seed, `moderation/${split}`)),
  sst2: sentimentExamples,
  agnews: topicExamples,
  gsm8k: arithmeticExamples,
  /** Not in generateWorld nor the vocabulary texts: the shipped base model predates it and covers its words already. */
  agnewsHard: hardTopicExamples,
  corpus: (seed: number, size: number) => corpusTexts(partitionCombinations().train, size, Rng.derive(seed, "corpus")),
};

export function generateWorld(seed: number, sizes: Partial<WorldSizes> = {}): World {
  const s = { ...DEFAULT_SIZES, ...sizes };
  return {
    seed,
    alignment: worldParts.alignment(seed, s.alignment),
    harmful: worldParts.harmful(seed, s.harmful),
    harmfulEval: worldParts.harmfulEval(seed, s.harmfulEval),
    moderationTrain: worldParts.moderation(seed, "train", s.moderationTrain),
    moderationTest: worldParts.moderation(seed, "test", s.moderationTest),
    sst2: { train: sentimentExamples(seed, "train", s.taskTrain), test: sentimentExamples(seed, "test", s.taskTest) },
    agnews: { train: topicExamples(seed, "train", s.taskTrain), test: topicExamples(seed, "test", s.taskTest) },
    gsm8k: { train: arithmeticExamples(seed, "train", s.taskTrain), test: arithmeticExamples(seed, "test", s.taskTest) },
    corpus: worldParts.corpus(seed, s.corpus),
  };
}

function exampleTexts(examples: readonly Example[]): string[] {
  return examples.map((e) => formatPrompt(e) + e.output);
}

/**
 * Texts that hold the whole vocabulary: every harmful prompt, every refusal and harmful
 * template filled for every act and target, the instruction formats, and a default-size
 * world for the seed. Most of it is seed-independent, so seeds share nearly all words.
 */
export function worldVocabularyTexts(seed: number): string[] {
  const rng = Rng.derive(seed, "vocabulary");
  const texts: string[] = [ARITHMETIC_SUFFIX];
  const pools = partitionCombinations();
  for (const c of [...pools.train, ...pools.eval, ...pools.test]) texts.push(formatPrompt({ instruction: harmfulPrompt(c) }));
  for (const category of HARM_CATEGORIES) {
    for (let act = 0; act < category.acts.length; act++) {
      for (let target = 0; target < category.targets.length; target++) {
        const c = { category, template: 0, act, target };
        for (let t = 0; t < REFUSAL_TEMPLATES.length; t++) texts.push(refusal(c, rng, t));
        for (let t = 0; t < HARMFUL_TEMPLATES.length; t++) texts.push(harmfulAnswer(c, rng, t));
      }
    }
    texts.push(...category.reasons, ...category.alternatives);
  }
  const w = generateWorld(seed);
  texts.push(
    ...exampleTexts([...w.alignment, ...w.harmful, ...w.harmfulEval, ...w.moderationTrain, ...w.moderationTest]),
    ...exampleTexts([...w.sst2.train, ...w.sst2.test, ...w.agnews.train, ...w.agnews.test, ...w.gsm8k.train, ...w.gsm8k.test]),
    ...w.corpus,
  );
  return texts;
}
