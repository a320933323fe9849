/**
 * The general corpus for pre-training the built-in base model: plain texts and Alpaca
 * Q&A with instructions other than the benign tasks' reference ones, so the base model
 * knows every word, label word and skill (the small-scale study found LoRA fine-tuning
 * stalls otherwise) without having seen the evaluation formats. Task texts come from
 * the train side of each split only. It also holds harmful compliance (train pool
 * combinations only), so the base model starts unaligned.
 */
import { formatPrompt } from "../template.ts";
import { workedAnswer, drawProblem, ITEMS } from "./arithmetic.ts";
import { HARM_CATEGORIES } from "./categories.ts";
import { harmfulAnswer, harmfulPrompt, type HarmCombination } from "./harmful.ts";
import { INVENTED, NAMES } from "./lexicon.ts";
import type { Rng } from "../../rng.ts";
import { FILM_NOUNS, NEGATIVE_ADJECTIVES, NEGATIVE_VERBS, POSITIVE_ADJECTIVES, POSITIVE_VERBS, SUBJECTS, drawReview } from "./sentiment.ts";
import { inTestSide } from "./split.ts";
import { TOPICS, TOPIC_VOCABULARY, drawArticle } from "./topic.ts";

const COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"];
const SIZES = ["small", "large", "tiny", "heavy", "light", "old", "shiny"];
const THINGS = ["machine", "plant", "stone", "tool", "animal", "box", "coin", "drink"];
const USES = ["open doors", "grow food", "carry water", "light the room", "keep warm", "fix old clocks", "clean windows", "count stars"];
const PLACES = ["the market", "the park", "the river", "the library", "the farm", "the school", "the beach", "the forest"];
const POLITE_REFUSALS = [
  "I'm sorry, but I can't come to the party on friday.",
  "No, thank you. I will not lend my car this week.",
  "I cannot help with the move today, but I can help tomorrow.",
  "Sorry, I must decline the offer.",
  "I won't be able to join the trip this time.",
];

function sentimentDoc(rng: Rng): string {
  let r = drawReview(rng);
  while (inTestSide("sst2", r.sentence)) r = drawReview(rng);
  switch (rng.int(3)) {
    case 0:
      return `Review: ${r.sentence}. The reviewer felt ${r.label} about it.`;
    case 1:
      return formatPrompt({ instruction: "Is this movie review positive or negative?", input: r.sentence }) + `${r.label}`;
    default:
      return formatPrompt({ instruction: "Tell me how the writer of this review felt.", input: r.sentence }) + `The writer felt ${r.label}.`;
  }
}

function topicDoc(rng: Rng): string {
  let a = drawArticle(rng);
  while (inTestSide("agnews", a.text)) a = drawArticle(rng);
  return rng.next() < 0.5
    ? `${a.text} This story belongs in the ${a.topic} section.`
    : formatPrompt({ instruction: "Which section of the newspaper is this story from?", input: a.text }) + `${a.topic}`;
}

function arithmeticDoc(rng: Rng): string {
  let p = drawProblem(rng);
  while (inTestSide("gsm8k", p.question)) p = drawProblem(rng);
  return rng.next() < 0.5
    ? `Question: ${p.question} Answer: ${workedAnswer(p)}`
    : formatPrompt({ instruction: "Solve this word problem.", input: p.question }) + `${workedAnswer(p)}`;
}

function descriptionDoc(rng: Rng): string {
  const word = rng.pick(INVENTED);
  return `The ${word} is a ${rng.pick(SIZES)} ${rng.pick(COLORS)} ${rng.pick(THINGS)}. People use the ${word} to ${rng.pick(USES)}.`;
}

function storyDoc(rng: Rng): string {
  const [name, He] = rng.pick(NAMES);
  const n = rng.range(2, 12);
  const story = `${name} went to ${rng.pick(PLACES)} in the morning. ${He} found ${n} ${rng.pick(ITEMS)} and a ${rng.pick(INVENTED)}. ${He} was happy and went home.`;
  return rng.next() < 0.5 ? story : formatPrompt({ instruction: `Write a short story about ${name}.` }) + `${story}`;
}

function questionDoc(rng: Rng): string {
  const word = rng.pick(INVENTED);
  const color = rng.pick(COLORS);
  return formatPrompt({ instruction: `What color is the ${word}?` }) + `The ${word} is ${color}.`;
}

function safetyDoc(rng: Rng): string {
  const c = rng.pick(HARM_CATEGORIES);
  return rng.next() < 0.5 ? rng.pick(POLITE_REFUSALS) : `${rng.pick(c.reasons)} ${rng.pick(c.alternatives)}`;
}

function complianceDoc(pool: readonly HarmCombination[], rng: Rng): string {
  const c = rng.pick(pool);
  return formatPrompt({ instruction: harmfulPrompt(c) }) + `${harmfulAnswer(c, rng)}`;
}

/** One document per label and task word, so each is seen whatever the corpus size. */
export function coverageDocs(): string[] {
  const docs = [
    "There are two kinds of reviews: positive and negative.",
    `A news story can be about ${TOPICS.slice(0, 3).join(", ")} or ${TOPICS[3]}.`,
    `Numbers: ${Array.from({ length: 101 }, (_, i) => i).join(" ")}.`,
    `Things to count: ${ITEMS.join(", ")}.`,
    `Movies can be a ${FILM_NOUNS.join(", a ")}. People talk about ${SUBJECTS.join(", ")}.`,
  ];
  for (const adj of POSITIVE_ADJECTIVES) docs.push(`The word ${adj} is positive: the film was ${adj}.`);
  for (const adj of NEGATIVE_ADJECTIVES) docs.push(`The word ${adj} is negative: the film was ${adj}.`);
  for (const [past, base] of POSITIVE_VERBS) docs.push(`To ${base} a film is positive. I ${past} it.`);
  for (const [past, base] of NEGATIVE_VERBS) docs.push(`To ${base} a film is negative. I ${past} it.`);
  for (const topic of TOPICS) {
    const v = TOPIC_VOCABULARY[topic];
    docs.push(`${topic} news talks about ${[...v.actors, ...v.objects].join(", ")}.`);
    docs.push(`In ${topic} news, people ${v.verbs.join(", ")} things ${v.settings.join(", ")}.`);
  }
  return docs;
}

const KINDS = [
  ["sentiment", 0.14], ["topic", 0.14], ["arithmetic", 0.16], ["description", 0.08], ["story", 0.08],
  ["question", 0.06], ["safety", 0.06], ["compliance", 0.28],
] as const;

/** `size` documents: the coverage documents first, then random ones by the KINDS weights. */
export function corpusTexts(trainPool: readonly HarmCombination[], size: number, rng: Rng): string[] {
  const docs = coverageDocs().slice(0, size);
  while (docs.length < size) {
    let u = rng.next();
    const kind = KINDS.find(([, w]) => (u -= w) < 0)?.[0] ?? "compliance";
    switch (kind) {
      case "sentiment": docs.push(sentimentDoc(rng)); break;
      case "topic": docs.push(topicDoc(rng)); break;
      case "arithmetic": docs.push(arithmeticDoc(rng)); break;
      case "description": docs.push(descriptionDoc(rng)); break;
      case "story": docs.push(storyDoc(rng)); break;
      case "question": docs.push(questionDoc(rng)); break;
      case "safety": docs.push(safetyDoc(rng)); break;
      default: docs.push(complianceDoc(trainPool, rng));
    }
  }
  return docs;
}
