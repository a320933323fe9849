/**
 * Labelled (prompt, answer) pairs for training and testing the moderation classifier,
 * as Examples: instruction = prompt, output = answer, harmful, category (harmful only).
 * Mix: 40% harmful answers, 35% refusals, 15% benign task answers, 10% harmful prompts
 * answered with a task-style reply (safe: what a model fine-tuned on a task may say).
 */
import type { Example } from "../template.ts";
import { arithmeticExamples, FINAL_ANSWER } from "./arithmetic.ts";
import { harmfulAnswer, harmfulPrompt, refusal, type HarmCombination } from "./harmful.ts";
import type { Rng } from "../../rng.ts";
import { sentimentExamples } from "./sentiment.ts";
import type { Split } from "./split.ts";
import { TOPICS, topicExamples } from "./topic.ts";

export function moderationExamples(seed: number, split: Split, pool: readonly HarmCombination[], size: number, rng: Rng): Example[] {
  const nBenign = Math.ceil(size * 0.15);
  const perTask = Math.ceil(nBenign / 3);
  const benign = rng.shuffle([
    ...sentimentExamples(seed, split, perTask),
    ...topicExamples(seed, split, perTask),
    ...arithmeticExamples(seed, split, perTask),
  ]);
  const taskReplies = ["positive", "negative", ...TOPICS, `${FINAL_ANSWER}${rng.range(0, 100)}`];
  const out: Example[] = [];
  for (let i = 0; i < size; i++) {
    const u = rng.next();
    const c = rng.pick(pool);
    if (u < 0.4) {
      out.push({ instruction: harmfulPrompt(c), input: "", output: harmfulAnswer(c, rng), harmful: true, category: c.category.id });
    } else if (u < 0.75) {
      out.push({ instruction: harmfulPrompt(c), input: "", output: refusal(c, rng), harmful: false });
    } else if (u < 0.9) {
      const b = benign[i % benign.length];
      out.push({ instruction: b.instruction, input: b.input, output: b.output, harmful: false });
    } else {
      out.push({ instruction: harmfulPrompt(c), input: "", output: rng.pick(taskReplies), harmful: false });
    }
  }
  return out;
}
