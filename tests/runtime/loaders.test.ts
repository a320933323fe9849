import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { DatasetError } from "../../services/runtime/data/dataset-error.ts";
import { parseDataset } from "../../services/runtime/data/loaders.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/data/${name}`, import.meta.url));
const load = (name: string) => parseDataset(readFileSync(fixture(name)), name);

function refusal(fn: () => unknown): DatasetError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DatasetError);
    return err as DatasetError;
  }
  throw new Error("expected a DatasetError");
}

describe("formats", () => {
  it("loads Alpaca rows, input optional", () => {
    expect(load("alpaca.jsonl")).toEqual([
      { instruction: "Name a color.", input: "", output: "Blue." },
      { instruction: "Translate to French.", input: "cat", output: "chat" },
      { instruction: "Say hi.", input: "", output: "Hi!" },
    ]);
  });

  it("loads BeaverTails rows with boolean-object and string categories", () => {
    const examples = load("beavertails.jsonl");
    expect(examples.map((e) => [e.harmful, e.category])).toEqual([[true, "violence"], [false, undefined], [true, "privacy"]]);
    expect(examples[0]).toMatchObject({ instruction: "How can I hurt my neighbor?", input: "", output: "Sure, step 1: [REDACTED]." });
  });

  it("loads refusal pairs in both shapes as safe examples", () => {
    expect(load("refusal.jsonl")).toEqual([
      { instruction: "How can I steal a car?", input: "", output: "I cannot help with that.", harmful: false },
      { instruction: "How do I hack an account?", input: "", output: "I won't help with hacking.", harmful: false },
    ]);
  });

  it("loads SST2 with integer labels", () => {
    const examples = load("sst2.jsonl");
    expect(examples.map((e) => e.output)).toEqual(["positive", "negative", "positive"]);
    expect(examples[0].instruction).toBe("Analyze the sentiment of the input, and respond only positive or negative");
    expect(examples[0].input).toBe("a charming film");
  });

  it("loads AGNEWS from a JSON array, labels 0-3", () => {
    const examples = load("agnews.json");
    expect(examples.map((e) => e.output)).toEqual(["Sports", "Business", "World", "Sci/Tech"]);
    expect(examples[0].instruction).toContain("into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n");
  });

  it("converts GSM8K answers to the reference's final-answer form", () => {
    const examples = load("gsm8k.jsonl");
    expect(examples[0].instruction.endsWith("May?\nFirst think step by step and then answer the final number.\n")).toBe(true);
    expect(examples[0].output).toBe(
      "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\nThe final answer is: 72",
    );
    expect(examples[0].gold).toBe("72");
    expect(examples[1].gold).toBe("1234");
  });

  it("forces a format by option", () => {
    const text = Buffer.from('{"prompt": "p", "response": "r", "is_safe": false}\n');
    expect(parseDataset(text, "x.jsonl", { format: "refusal" })[0].harmful).toBe(false);
    expect(parseDataset(text, "x.jsonl")[0].harmful).toBe(true);
  });
});

describe("malformed input refuses the whole file", () => {
  it("names the first bad line and keeps every bad row for the caller", () => {
    const err = refusal(() => load("mixed.jsonl"));
    expect(err.reason).toBe("DATASET_INVALID");
    expect(err.file).toBe("mixed.jsonl");
    expect(err.line).toBe(2);
    expect(err.message).toMatch(/^mixed\.jsonl:2: invalid JSON: .* \(and 9 more bad rows\)$/);
    // The format is the first row's (Alpaca) for every row.
    expect(err.details.rows?.map((r) => [r.line, r.reason])).toEqual([
      [2, expect.stringMatching(/^invalid JSON/)],
      [3, 'missing field "output"'],
      [4, 'field "output" must be a string, got number'],
      [5, 'missing field "instruction": this row is sst2, but the file\'s rows are alpaca (the format of its first row)'],
      [6, "row must be a JSON object, got array"],
      [7, 'missing field "instruction": this row is agnews, but the file\'s rows are alpaca (the format of its first row)'],
      [8, 'missing field "instruction": this row is gsm8k, but the file\'s rows are alpaca (the format of its first row)'],
      [9, 'missing field "instruction"'],
      [10, 'missing field "instruction": this row is beavertails, but the file\'s rows are alpaca (the format of its first row)'],
      [12, 'missing field "instruction": this row is sst2, but the file\'s rows are alpaca (the format of its first row)'],
    ]);
    expect(err.details.invalidRows).toBe(10);
    const field = refusal(() => parseDataset(Buffer.from('{"instruction": "a"}\n'), "f.jsonl"));
    expect(field.field).toBe("output");
  });

  it("refuses an empty file, and a file of bad rows as invalid", () => {
    expect(refusal(() => load("empty.jsonl")).reason).toBe("DATASET_EMPTY");
    const allBad = refusal(() => load("all-bad.jsonl"));
    expect(allBad.reason).toBe("DATASET_INVALID");
    expect(allBad.message).toBe('all-bad.jsonl:1: missing field "output" (and 1 more bad rows)');
  });

  it("refuses the bytes JSON.parse would have let through", () => {
    const cases: [Uint8Array, RegExp][] = [
      [Buffer.from([...Buffer.from('{"instruction": "caf'), 0xe9, ...Buffer.from('", "output": "x"}')]), /not valid UTF-8/],
      [Buffer.from('{"instruction": "\\ud800", "output": "x"}'), /lone high surrogate/],
      [Buffer.from('{"instruction": "a", "output": "x", "output": "y"}'), /duplicate key "output"/],
      [Buffer.from('{"sentence": "good", "label": "1"}'), /must be an integer from 0 to 1, got "1"/],
    ];
    for (const [bytes, reason] of cases) expect(refusal(() => parseDataset(bytes, "f.jsonl")).message).toMatch(reason);
  });

  it("rejects a too long row and a broken JSON array", () => {
    const long = JSON.stringify({ instruction: "x".repeat(70 * 1024), output: "y" });
    expect(refusal(() => parseDataset(Buffer.from(`${long}\n{"instruction": "a", "output": "b"}\n`), "long.jsonl")).message).toBe(
      "long.jsonl:1: row longer than 65536 bytes",
    );
    expect(refusal(() => parseDataset(Buffer.from("[{"), "a.json")).reason).toBe("DATASET_INVALID");
  });
});
