/**
 * GSM8K-like word problems over small integers (every number, operands and results,
 * stays in 0..100), with a short worked answer ending "The final answer is: N".
 */
import type { Example } from "../template.ts";
import { NAMES } from "./lexicon.ts";
import type { Rng } from "../../rng.ts";
import { drawSplit, type Split } from "./split.ts";

export const ARITHMETIC_SUFFIX = "\nFirst think step by step and then answer the final number.\n";
export const FINAL_ANSWER = "The final answer is: ";
export const ITEMS = ["apples", "pencils", "marbles", "cookies", "stickers", "books", "eggs", "coins", "cards", "flowers"] as const;

interface Problem {
  question: string;
  working: string;
  answer: number;
}

export function drawProblem(rng: Rng): Problem {
  const [name, He] = rng.pick(NAMES);
  const he = He.toLowerCase();
  const items = rng.pick(ITEMS);
  switch (rng.int(5)) {
    case 0: {
      const a = rng.range(1, 20), b = rng.range(1, 20), c = a + b;
      return {
        question: `${name} has ${a} ${items}. ${He} buys ${b} more ${items}. How many ${items} does ${name} have now?`,
        working: `${name} starts with ${a} ${items}. ${He} buys ${b} more, so ${he} has ${a} + ${b} = ${c} ${items}.`,
        answer: c,
      };
    }
    case 1: {
      const a = rng.range(2, 30), b = rng.range(1, a), c = a - b;
      return {
        question: `${name} has ${a} ${items}. ${He} gives ${b} ${items} to a friend. How many ${items} does ${name} have left?`,
        working: `${name} starts with ${a} ${items} and gives away ${b}, so ${a} - ${b} = ${c} ${items} are left.`,
        answer: c,
      };
    }
    case 2: {
      const a = rng.range(2, 9), b = rng.range(2, 9), c = a * b;
      return {
        question: `${name} has ${a} boxes. Each box holds ${b} ${items}. How many ${items} are there in total?`,
        working: `There are ${a} boxes with ${b} ${items} in each, so ${a} * ${b} = ${c} ${items}.`,
        answer: c,
      };
    }
    case 3: {
      const a = rng.range(2, 9), b = rng.range(1, 9), c = a * b;
      return {
        question: `${name} shares ${c} ${items} equally among ${a} friends. How many ${items} does each friend get?`,
        working: `${c} ${items} shared among ${a} friends gives ${c} / ${a} = ${b} ${items} each.`,
        answer: b,
      };
    }
    default: {
      const a = rng.range(1, 20), b = rng.range(1, 20), e = a + b, d = rng.range(1, e), c = e - d;
      return {
        question: `${name} has ${a} ${items}. ${He} buys ${b} more and then gives away ${d}. How many ${items} does ${name} have now?`,
        working: `First, ${a} + ${b} = ${e} ${items}. Then ${e} - ${d} = ${c} ${items}.`,
        answer: c,
      };
    }
  }
}

/** The reference's answer text: the working, then the final-answer sentence. */
export function workedAnswer(p: Problem): string {
  return `${p.working} ${FINAL_ANSWER}${p.answer}`;
}

export function arithmeticExamples(seed: number, split: Split, size: number): Example[] {
  return drawSplit(seed, "gsm8k", split, size, drawProblem, (p) => p.question).map((p) => ({
    instruction: p.question + ARITHMETIC_SUFFIX,
    input: "",
    output: workedAnswer(p),
    gold: String(p.answer),
  }));
}
