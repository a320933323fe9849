/**
 * Fine-tune accuracy rules of the Vaccine reference (sst2/, ag_news/ and gsm8k/
 * pred_eval.py), reproduced exactly, quirks included, so our accuracies compare with the
 * paper's:
 * - SST2: correct when the answer contains the gold word as a substring, lower-case or
 *   capitalized ("positive"/"Positive"). Only the gold word is checked: an answer holding
 *   both words counts as correct for either gold label, and "nonnegative" contains
 *   "negative". "POSITIVE" does not match.
 * - AGNEWS: the same with the category name or its lower-case form, except that Sci/Tech
 *   accepts "Sci/Tech" or "sci" (so "science" counts, "Science" does not).
 * - GSM8K: commas removed; numbers are /-?\d+\.?\d*\/; the first number after the first
 *   "The final answer is: " (before any second one), else the last number of the whole
 *   text; compared as floats with the gold read the same way ("3.0" equals "3").
 *
 * `predicted` is what the rule read. For the label tasks it is the gold label when the
 * rule found it, else the first other label (by position) whose variants occur, else "",
 * so `correct === (predicted === gold)` always holds.
 *
 * `strictCorrect`: the label the answer names first is the gold. The reference's rule takes
 * the gold anywhere, so listing every label, or echoing the instruction that lists them,
 * scores 100%; by the first label such a model scores chance (scoring.ts, strict accuracy).
 * A label's variants are substrings as the reference's ("world" in "worldwide" counts), so
 * the first one is read, not whether there are others.
 */
import { FINAL_ANSWER } from "../data/world/arithmetic.ts";
import { TOPICS } from "../data/world/topic.ts";

export type Task = "sst2" | "agnews" | "gsm8k";

export interface ParsedAnswer {
  predicted: string;
  correct: boolean;
  strictCorrect: boolean;
}

/** The substrings the reference accepts for each label. */
const LABEL_VARIANTS: Record<"sst2" | "agnews", Record<string, readonly string[]>> = {
  sst2: { positive: ["positive", "Positive"], negative: ["negative", "Negative"] },
  agnews: { World: ["World", "world"], Sports: ["Sports", "sports"], Business: ["Business", "business"], "Sci/Tech": ["Sci/Tech", "sci"] },
};
// The world's topic names and the reference's must not drift apart.
if (TOPICS.some((t) => !(t in LABEL_VARIANTS.agnews))) throw new Error("task-parsers: TOPICS and AGNEWS labels differ");

const NUMBER = /-?\d+\.?\d*/g;

export function parseTaskAnswer(task: Task, answer: string, gold: string): ParsedAnswer {
  if (task === "gsm8k") return parseArithmetic(answer, gold);
  return parseLabel(LABEL_VARIANTS[task], task, answer, gold);
}

function parseLabel(labels: Record<string, readonly string[]>, task: string, answer: string, gold: string): ParsedAnswer {
  if (!Object.hasOwn(labels, gold)) throw new RangeError(`${task}: unknown gold label ${JSON.stringify(gold)} (known: ${Object.keys(labels).join(", ")})`);
  const at = (label: string) => {
    const positions = labels[label].map((v) => answer.indexOf(v)).filter((i) => i >= 0);
    return positions.length === 0 ? -1 : Math.min(...positions);
  };
  let firstLabel = "";
  let first = Infinity;
  for (const label of Object.keys(labels)) {
    const i = at(label);
    if (i >= 0 && i < first) [firstLabel, first] = [label, i];
  }
  const strictCorrect = firstLabel === gold;
  if (at(gold) >= 0) return { predicted: gold, correct: true, strictCorrect };
  return { predicted: firstLabel, correct: false, strictCorrect };
}

/** The number the reference reads from a text, as written (commas removed); "" when none. */
export function extractFinalNumber(text: string): string {
  const clean = text.replaceAll(",", "");
  const all = clean.match(NUMBER);
  if (!all) return "";
  const segments = clean.split(FINAL_ANSWER);
  const afterMarker = segments.length > 1 ? segments[1].match(NUMBER) : null;
  return afterMarker ? afterMarker[0] : all[all.length - 1];
}

function parseArithmetic(answer: string, gold: string): ParsedAnswer {
  const goldNumber = extractFinalNumber(gold);
  if (goldNumber === "") throw new RangeError(`gsm8k: gold ${JSON.stringify(gold)} holds no number`);
  const predicted = extractFinalNumber(answer);
  const correct = predicted !== "" && Number.parseFloat(predicted) === Number.parseFloat(goldNumber);
  // One number is read, whatever the text holds: the reference's rule is already strict.
  return { predicted, correct, strictCorrect: correct };
}
