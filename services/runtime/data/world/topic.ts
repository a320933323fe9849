/**
 * AGNEWS-like topic task: a headline and a follow-up sentence built from the vocabulary
 * of one of the four AGNEWS categories, labelled with that category's name.
 */
import type { Example } from "../template.ts";
import { capitalize } from "./lexicon.ts";
import type { Rng } from "../../rng.ts";
import { drawSplit, type Split } from "./split.ts";

export const TOPIC_INSTRUCTION = "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n";

export const TOPICS = ["World", "Sports", "Business", "Sci/Tech"] as const;
export type Topic = (typeof TOPICS)[number];

export interface TopicVocabulary {
  actors: readonly string[];
  verbs: readonly string[];
  objects: readonly string[];
  settings: readonly string[];
  followUps: readonly string[];
}

export const TOPIC_VOCABULARY: Record<Topic, TopicVocabulary> = {
  World: {
    actors: ["the prime minister", "the president", "rebel leaders", "the foreign minister", "united nations officials", "protesters", "the army", "diplomats"],
    verbs: ["met with", "warned", "called for", "rejected", "signed", "condemned"],
    objects: ["a ceasefire", "new peace talks", "the border deal", "the election results", "a trade embargo", "the refugee plan"],
    settings: ["in iraq", "in brazil", "in the capital", "at the summit", "in geneva", "near the border"],
    followUps: ["Officials said talks would continue next week.", "Thousands of people marched in the streets.", "The government called the move a threat to peace.", "Neighboring countries urged both sides to stay calm."],
  },
  Sports: {
    actors: ["the tigers", "the rovers", "the national team", "the star striker", "the coach", "the champion"],
    verbs: ["won", "lost", "clinched", "celebrated", "signed", "missed"],
    objects: ["the final match", "the league title", "a new contract", "the championship", "the opening game", "a gold medal"],
    settings: ["on sunday", "at the stadium", "in the playoffs", "after extra time", "at the olympics", "this season"],
    followUps: ["Fans cheered as the players lifted the trophy.", "The coach praised the defense after the game.", "The team scored twice in the second half.", "The next round starts on saturday."],
  },
  Business: {
    actors: ["the company", "investors", "the central bank", "oil producers", "the retailer", "shareholders"],
    verbs: ["reported", "raised", "cut", "announced", "approved", "expected"],
    objects: ["record profits", "interest rates", "quarterly earnings", "a merger deal", "job cuts", "higher prices"],
    settings: ["on wall street", "in the third quarter", "this year", "in early trading", "at the annual meeting", "after the market closed"],
    followUps: ["Shares rose three percent on the news.", "Analysts expect sales to slow next year.", "The stock market closed lower on friday.", "The deal is worth billions of dollars."],
  },
  "Sci/Tech": {
    actors: ["researchers", "the space agency", "scientists", "the software maker", "engineers", "the chip maker"],
    verbs: ["launched", "released", "discovered", "unveiled", "tested", "developed"],
    objects: ["a new satellite", "a faster processor", "a security update", "a new planet", "a mobile app", "an internet browser"],
    settings: ["in california", "on the internet", "in a new study", "at the tech show", "for mobile phones", "in the lab"],
    followUps: ["The new software will be free to download.", "The study was published in a science journal.", "The rocket is expected to reach orbit next month.", "Users can install the update on their computers."],
  },
};

interface Article {
  text: string;
  topic: Topic;
}

export function drawArticle(rng: Rng): Article {
  const topic = rng.pick(TOPICS);
  const v = TOPIC_VOCABULARY[topic];
  const headline = `${capitalize(rng.pick(v.actors))} ${rng.pick(v.verbs)} ${rng.pick(v.objects)} ${rng.pick(v.settings)}.`;
  return { text: `${headline} ${rng.pick(v.followUps)}`, topic };
}

export function topicExamples(seed: number, split: Split, size: number): Example[] {
  return drawSplit(seed, "agnews", split, size, drawArticle, (a) => a.text).map((a) => ({
    instruction: TOPIC_INSTRUCTION,
    input: a.text,
    output: a.topic,
    category: a.topic,
    gold: a.topic,
  }));
}
