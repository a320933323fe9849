/**
 * Loads user dataset files (JSONL, or a JSON array) in the formats people have and
 * converts every row to an Example. The format is detected per row from its keys, or
 * forced by option:
 *   alpaca       {instruction, input?, output}
 *   beavertails  {prompt, response, is_safe, category?}: category a string or an object of
 *                booleans (the first true key wins); harmful = !is_safe
 *   refusal      {prompt, response} or {question, refusal}: a safe alignment pair
 *   sst2         {sentence, label}: label 0/1 or "negative"/"positive"
 *   agnews       {text, label}: label 0-3 -> World, Sports, Business, Sci/Tech (or the name)
 *   gsm8k        {question, answer}: answer ends with "#### N"; output = the reasoning
 *                before "####" (trailing whitespace trimmed) + "\nThe final answer is: N",
 *                calculator annotations like <<2*3=6>> kept; gold = N without commas
 * Bad rows are reported with file, line (JSONL) or item (JSON array) number and reason.
 */
import { readFileSync, statSync } from "node:fs";
import { ARITHMETIC_SUFFIX, FINAL_ANSWER } from "./world/arithmetic.ts";
import { HARM_CATEGORIES } from "./world/categories.ts";
import { SENTIMENT_INSTRUCTION } from "./world/sentiment.ts";
import { TOPIC_INSTRUCTION, TOPICS } from "./world/topic.ts";
import { DatasetError } from "./builtin.ts";
import type { Example } from "./template.ts";

export type RowFormat = "alpaca" | "beavertails" | "refusal" | "sst2" | "agnews" | "gsm8k";

export interface LoadOptions {
  /** Force one format for every row (default: detect per row). */
  format?: RowFormat | "auto";
  /** Fail on the first bad row instead of collecting errors. */
  strict?: boolean;
  /** Errors kept in the result (default 100); later ones are only counted. */
  maxErrors?: number;
  /** Longest JSONL line in bytes (default 64 KiB). */
  maxLineBytes?: number;
  /** Largest file in bytes (default 64 MiB). */
  maxFileBytes?: number;
}

export interface RowError {
  file: string;
  /** 1-based line of a JSONL file, or 1-based item of a JSON array. */
  line: number;
  reason: string;
}

export interface LoadResult {
  examples: Example[];
  errors: RowError[];
  /** All bad rows, including those beyond maxErrors. */
  errorCount: number;
}

export const DEFAULT_MAX_LINE_BYTES = 64 * 1024;
export const DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024;

/** A row problem; the loader adds file and line. */
class RowProblem extends Error {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

type Row = Record<string, unknown>;

function str(row: Row, field: string, optional = false): string {
  const v = row[field];
  if (v === undefined || v === null) {
    if (optional) return "";
    throw new RowProblem(`missing field "${field}"`, field);
  }
  if (typeof v !== "string") throw new RowProblem(`field "${field}" must be a string, got ${typeof v}`, field);
  return v;
}

function detect(row: Row): RowFormat {
  const has = (k: string) => k in row;
  if (has("instruction")) return "alpaca";
  if (has("prompt") && (has("is_safe") || has("category"))) return "beavertails";
  if (has("prompt") || (has("question") && has("refusal"))) return "refusal";
  if (has("question")) return "gsm8k";
  if (has("sentence")) return "sst2";
  if (has("text")) return "agnews";
  throw new RowProblem(`unrecognised row: keys ${JSON.stringify(Object.keys(row))} match no known format (alpaca, beavertails, refusal, sst2, agnews, gsm8k)`);
}

/** BeaverTails names map to our category ids; other names are kept as given. */
function categoryId(name: string): string {
  return HARM_CATEGORIES.find((c) => c.label === name || c.id === name)?.id ?? name;
}

function beaverTailsCategory(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return categoryId(value);
  if (typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value as Row)) {
      if (typeof v !== "boolean") throw new RowProblem(`field "category" must map names to booleans, "${k}" is ${typeof v}`, "category");
      if (v) return categoryId(k);
    }
    return undefined;
  }
  throw new RowProblem(`field "category" must be a string or an object of booleans, got ${Array.isArray(value) ? "array" : typeof value}`, "category");
}

const SST2_LABELS: Record<string, "negative" | "positive"> = { "0": "negative", "1": "positive", negative: "negative", positive: "positive" };

function labelKey(v: unknown): string {
  if (typeof v === "number" || typeof v === "string") return String(v);
  if (v === undefined) throw new RowProblem(`missing field "label"`, "label");
  throw new RowProblem(`field "label" must be a number or a string, got ${typeof v}`, "label");
}

function convert(row: Row, format: RowFormat): Example {
  switch (format) {
    case "alpaca":
      // Optional labels (category, gold) travel along: harmful-prompt and task files carry them.
      return {
        instruction: str(row, "instruction"),
        input: str(row, "input", true),
        output: str(row, "output"),
        ...(typeof row.category === "string" ? { category: row.category } : {}),
        ...(typeof row.gold === "string" ? { gold: row.gold } : {}),
      };
    case "beavertails": {
      const prompt = str(row, "prompt");
      const response = str(row, "response");
      if (typeof row.is_safe !== "boolean") {
        throw new RowProblem(row.is_safe === undefined ? `missing field "is_safe"` : `field "is_safe" must be a boolean, got ${typeof row.is_safe}`, "is_safe");
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
      const key = labelKey(row.label);
      const label = Object.hasOwn(SST2_LABELS, key) ? SST2_LABELS[key] : undefined;
      if (!label) throw new RowProblem(`unknown label ${JSON.stringify(row.label)} for sst2 (expected 0, 1, "negative" or "positive")`, "label");
      return { instruction: SENTIMENT_INSTRUCTION, input: sentence, output: label, category: label, gold: label };
    }
    case "agnews": {
      const text = str(row, "text");
      const key = labelKey(row.label);
      const topic = /^[0-3]$/.test(key) ? TOPICS[Number(key)] : TOPICS.find((t) => t === key);
      if (!topic) throw new RowProblem(`unknown label ${JSON.stringify(row.label)} for agnews (expected 0-3 or ${TOPICS.join(", ")})`, "label");
      return { instruction: TOPIC_INSTRUCTION, input: text, output: topic, category: topic, gold: topic };
    }
    case "gsm8k": {
      const question = str(row, "question");
      const answer = str(row, "answer");
      const m = /^([\s\S]*?)####\s*(-?[\d,]+(?:\.\d+)?)\s*$/.exec(answer);
      if (!m) throw new RowProblem(`field "answer" must end with "#### N" (a number)`, "answer");
      const n = m[2];
      return { instruction: question + ARITHMETIC_SUFFIX, input: "", output: `${m[1].trimEnd()}\n${FINAL_ANSWER}${n}`, gold: n.replaceAll(",", "") };
    }
  }
}

function convertRow(value: unknown, opts: LoadOptions): Example {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new RowProblem("row is not a JSON object");
  const row = value as Row;
  return convert(row, !opts.format || opts.format === "auto" ? detect(row) : opts.format);
}

/** Parses dataset text; `file` names the source in errors. */
export function parseDataset(text: string, file: string, opts: LoadOptions = {}): LoadResult {
  const maxErrors = opts.maxErrors ?? 100;
  const maxLineBytes = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const examples: Example[] = [];
  const errors: RowError[] = [];
  let errorCount = 0;
  const fail = (line: number, problem: unknown) => {
    const reason = problem instanceof Error ? problem.message : String(problem);
    if (opts.strict) {
      throw new DatasetError("DATASET_INVALID", `${file}:${line}: ${reason}`, { file, line, field: problem instanceof RowProblem ? problem.field : undefined });
    }
    errorCount++;
    if (errors.length < maxErrors) errors.push({ file, line, reason });
  };
  const take = (line: number, value: unknown) => {
    try {
      examples.push(convertRow(value, opts));
    } catch (err) {
      if (!(err instanceof RowProblem)) throw err;
      fail(line, err);
    }
  };

  const body = text.replace(/^\uFEFF/, "");
  if (body.trimStart().startsWith("[")) {
    let items: unknown;
    try {
      items = JSON.parse(body);
    } catch (err) {
      throw new DatasetError("DATASET_INVALID", `${file}: invalid JSON: ${(err as Error).message}`, { file });
    }
    if (!Array.isArray(items)) throw new DatasetError("DATASET_INVALID", `${file}: expected a JSON array of rows`, { file });
    items.forEach((item, i) => take(i + 1, item));
  } else {
    const lines = body.split("\n");
    lines.forEach((raw, i) => {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line.trim() === "") return;
      if (Buffer.byteLength(line, "utf8") > maxLineBytes) return fail(i + 1, new RowProblem(`line longer than ${maxLineBytes} bytes`));
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (err) {
        return fail(i + 1, new RowProblem(`invalid JSON: ${(err as Error).message}`));
      }
      take(i + 1, value);
    });
  }
  if (examples.length === 0) {
    const why = errorCount > 0 ? `all ${errorCount} rows are invalid (first: line ${errors[0].line}: ${errors[0].reason})` : "the file has no rows";
    throw new DatasetError("DATASET_EMPTY", `${file}: no valid examples: ${why}`, { file });
  }
  return { examples, errors, errorCount };
}

/** Reads and parses a dataset file, refusing files over maxFileBytes before reading them. */
export function loadDatasetFile(path: string, opts: LoadOptions = {}): LoadResult {
  const maxFileBytes = opts.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
  const size = statSync(path).size;
  if (size > maxFileBytes) {
    throw new DatasetError("DATASET_TOO_LARGE", `${path}: file is ${size} bytes, the limit is ${maxFileBytes}`, { file: path });
  }
  return parseDataset(readFileSync(path, "utf8"), path, opts);
}
