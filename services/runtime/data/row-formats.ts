/**
 * The row formats of user datasets and their exact types, each row converted to an Example:
 *   alpaca       {instruction, input?, output, category?, gold?}: strings
 *   beavertails  {prompt, response, is_safe, category?}: is_safe a boolean; category a string
 *                or an object of booleans (the first true key wins); harmful = !is_safe
 *   refusal      {prompt, response} or {question, refusal}: a safe alignment pair
 *   sst2         {sentence, label}: label the integer 0 (negative) or 1 (positive)
 *   agnews       {text, label}: label an integer 0-3 -> World, Sports, Business, Sci/Tech
 *   gsm8k        {question, answer}: answer ends with "#### N"; output = the reasoning
 *                before "####" (trailing whitespace trimmed) + "\nThe final answer is: N",
 *                calculator annotations like <<2*3=6>> kept; gold = N without commas
 * Other keys are allowed (real exports carry ids); the fields above must have exactly
 * these types: a label given as the string "1" is refused, not coerced.
 */
import { ARITHMETIC_SUFFIX, FINAL_ANSWER } from "./world/arithmetic.ts";
import { HARM_CATEGORIES } from "./world/categories.ts";
import { SENTIMENT_INSTRUCTION } from "./world/sentiment.ts";
import { TOPIC_INSTRUCTION, TOPICS } from "./world/topic.ts";
import type { Example } from "./template.ts";

export const ROW_FORMATS = ["alpaca", "beavertails", "refusal", "sst2", "agnews", "gsm8k"] as const;
export type RowFormat = (typeof ROW_FORMATS)[number];

/** Why one row is refused; the reader adds the line. */
export class RowProblem extends Error {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = "RowProblem";
  }
}

export type Row = Record<string, unknown>;

function typeName(v: unknown): string {
  if (v === null) return "null";
  return Array.isArray(v) ? "array" : typeof v;
}

function str(row: Row, field: string, optional = false): string {
  const v = row[field];
  if (v === undefined) {
    if (optional) return "";
    throw new RowProblem(`missing field "${field}"`, field);
  }
  if (typeof v !== "string") throw new RowProblem(`field "${field}" must be a string, got ${typeName(v)}`, field);
  return v;
}

function label(row: Row, max: number): number {
  const v = row.label;
  if (v === undefined) throw new RowProblem(`missing field "label"`, "label");
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max) {
    throw new RowProblem(`field "label" must be an integer from 0 to ${max}, got ${JSON.stringify(v)}`, "label");
  }
  return v;
}

/** The format a row's keys name. */
export function detectFormat(row: Row): RowFormat {
  const has = (k: string) => k in row;
  if (has("instruction")) return "alpaca";
  if (has("prompt") && (has("is_safe") || has("category"))) return "beavertails";
  if (has("prompt") || (has("question") && has("refusal"))) return "refusal";
  if (has("question")) return "gsm8k";
  if (has("sentence")) return "sst2";
  if (has("text")) return "agnews";
  throw new RowProblem(`unrecognised row: keys ${JSON.stringify(Object.keys(row))} match no known format (${ROW_FORMATS.join(", ")})`);
}

/** BeaverTails names map to our category ids; other names are kept as given. */
function categoryId(name: string): string {
  return HARM_CATEGORIES.find((c) => c.label === name || c.id === name)?.id ?? name;
}

function beaverTailsCategory(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === "string") return categoryId(value);
  if (typeName(value) === "object") {
    const entries = Object.entries(value as Row);
    for (const [k, v] of entries) {
      if (typeof v !== "boolean") throw new RowProblem(`field "category" must map names to booleans, "${k}" is ${typeName(v)}`, "category");
    }
    const first = entries.find(([, v]) => v);
    return first ? categoryId(first[0]) : undefined;
  }
  throw new RowProblem(`field "category" must be a string or an object of booleans, got ${typeName(value)}`, "category");
}

const SST2_LABELS = ["negative", "positive"] as const;

/** A parsed row as an object; anything else is refused. */
export function asRow(value: unknown): Row {
  if (typeName(value) !== "object") throw new RowProblem(`row must be a JSON object, got ${typeName(value)}`);
  return value as Row;
}

/** The Example a row of the given format stands for; a RowProblem names what is wrong. */
export function convertRow(row: Row, format: RowFormat): Example {
  switch (format) {
    case "alpaca": {
      // Optional labels (category, gold) travel along: harmful-prompt and task files carry them.
      const category = str(row, "category", true);
      const gold = str(row, "gold", true);
      return {
        instruction: str(row, "instruction"),
        input: str(row, "input", true),
        output: str(row, "output"),
        ...(row.category !== undefined ? { category } : {}),
        ...(row.gold !== undefined ? { gold } : {}),
      };
    }
    case "beavertails": {
      const prompt = str(row, "prompt");
      const response = str(row, "response");
      if (typeof row.is_safe !== "boolean") {
        throw new RowProblem(row.is_safe === undefined ? `missing field "is_safe"` : `field "is_safe" must be a boolean, got ${typeName(row.is_safe)}`, "is_safe");
      }
      const category = beaverTailsCategory(row.category);
      const harmful = !row.is_safe;
      return { instruction: prompt, input: "", output: response, harmful, ...(harmful && category ? { category } : {}) };
    }
    case "refusal":
      return "prompt" in row
        ? { instruction: str(row, "prompt"), input: "", output: str(row, "response"), harmful: false }
        : { instruction: str(row, "question"), input: "", output: str(row, "refusal"), harmful: false };
    case "sst2": {
      const sentence = str(row, "sentence");
      const word = SST2_LABELS[label(row, 1)];
      return { instruction: SENTIMENT_INSTRUCTION, input: sentence, output: word, category: word, gold: word };
    }
    case "agnews": {
      const text = str(row, "text");
      const topic = TOPICS[label(row, TOPICS.length - 1)];
      return { instruction: TOPIC_INSTRUCTION, input: text, output: topic, category: topic, gold: topic };
    }
    case "gsm8k": {
      const question = str(row, "question");
      const answer = str(row, "answer");
      const m = /^([\s\S]*?)####\s*(-?\d[\d,]*(?:\.\d+)?)\s*$/.exec(answer);
      if (!m) throw new RowProblem(`field "answer" must end with "#### N" (a number)`, "answer");
      const n = m[2];
      return { instruction: question + ARITHMETIC_SUFFIX, input: "", output: `${m[1].trimEnd()}\n${FINAL_ANSWER}${n}`, gold: n.replaceAll(",", "") };
    }
  }
}
