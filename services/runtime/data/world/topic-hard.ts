/**
 * A harder AGNEWS-like task (docs/method.md#fine-tune-accuracy): the four categories share
 * their whole vocabulary, and only the article's first phrase decides the label, an actor or
 * an object of that topic (12 to 14 phrases each); the verb, object, setting and follow-up
 * sentence are each drawn from a topic of their own, so most other words point elsewhere.
 * A short fine-tuning run of the built-in base model does not reach 100% on it (51% after
 * 150 steps, 92% after 300; bench/results/hard-task.json), so a defence's accuracy cost can
 * show. Every word is the easy task's (topic.ts), which the shipped base model's tokenizer
 * holds. Same instruction and labels as AGNEWS: the AGNEWS rule scores it (eval/task-parsers.ts).
 */
import type { Example } from "../template.ts";
import { capitalize } from "./lexicon.ts";
import type { Rng } from "../../rng.ts";
import { drawSplit, type Split } from "./split.ts";
import { TOPIC_INSTRUCTION, TOPIC_VOCABULARY, TOPICS, type Topic } from "./topic.ts";

/** The split key of the task: its train and test sides are drawn apart from AGNEWS's. */
export const HARD_TOPIC_TASK = "agnews-hard";

export function drawHardArticle(rng: Rng): { text: string; topic: Topic } {
  const topic = rng.pick(TOPICS);
  const own = TOPIC_VOCABULARY[topic];
  // At least one slot of another topic, so that no article is also an AGNEWS one (whose train
  // side the base model's corpus quotes).
  let slots: Topic[];
  do slots = [rng.pick(TOPICS), rng.pick(TOPICS), rng.pick(TOPICS), rng.pick(TOPICS)];
  while (slots.every((t) => t === topic));
  const [verb, object, setting, followUp] = slots.map((t) => TOPIC_VOCABULARY[t]);
  // An object leads with an article, so that its first word is one the tokenizer holds capitalized.
  const lead = rng.pick([...own.actors, ...own.objects.map((o) => (/^(a|an|the) /.test(o) ? o : `the ${o}`))]);
  const headline = `${capitalize(lead)} ${rng.pick(verb.verbs)} ${rng.pick(object.objects)} ${rng.pick(setting.settings)}.`;
  return { text: `${headline} ${rng.pick(followUp.followUps)}`, topic };
}

export function hardTopicExamples(seed: number, split: Split, size: number): Example[] {
  return drawSplit(seed, HARD_TOPIC_TASK, split, size, drawHardArticle, (a) => a.text).map((a) => ({
    instruction: TOPIC_INSTRUCTION,
    input: a.text,
    output: a.topic,
    category: a.topic,
    gold: a.topic,
  }));
}
