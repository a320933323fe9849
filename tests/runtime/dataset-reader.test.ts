import { describe, expect, it } from "vitest";
import { DatasetReader, type ReaderOptions } from "../../services/runtime/data/dataset-reader.ts";
import type { Example } from "../../services/runtime/data/template.ts";

/** Reads bytes in chunks of the given size; the result must not depend on it. */
function read(input: string | Uint8Array, options: ReaderOptions = {}, chunk = Infinity) {
  const bytes = typeof input === "string" ? Buffer.from(input) : input;
  const examples: [number, Example][] = [];
  const reader = new DatasetReader({ ...options, onExample: (e, line) => examples.push([line, e]) });
  for (let i = 0; i < bytes.length; i += chunk) reader.push(bytes.subarray(i, Math.min(bytes.length, i + chunk)));
  return { ...reader.end(), examples };
}

/** The same read at every chunk size from 1 byte to whole. */
function readAnyChunks(input: string | Uint8Array, options: ReaderOptions = {}) {
  const whole = read(input, options);
  for (const size of [1, 2, 3, 7, 64]) expect(read(input, options, size), `chunks of ${size}`).toEqual(whole);
  return whole;
}

const bytes = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p))));
const row = (value: object) => JSON.stringify(value);
const alpaca = row({ instruction: "Say hi.", output: "Hi!" });

describe("the bad-row corpus", () => {
  // [case, file bytes, forced format or auto, line, reason]
  const cases: [string, Uint8Array, ReaderOptions["format"], number, RegExp][] = [
    ["non-UTF-8 byte", bytes(alpaca, "\n", '{"instruction": "caf', [0xe9], '", "output": "x"}\n'), "auto", 2, /^not valid UTF-8$/],
    ["overlong UTF-8 encoding", bytes(alpaca, "\n", '{"instruction": "', [0xc0, 0xaf], '", "output": "x"}'), "auto", 2, /^not valid UTF-8$/],
    ["UTF-8 encoded surrogate", bytes(alpaca, "\n", '{"instruction": "', [0xed, 0xa0, 0x80], '", "output": "x"}'), "auto", 2, /^not valid UTF-8$/],
    ["lone surrogate escape", bytes('{"instruction": "a\\ud800", "output": "x"}'), "auto", 1, /lone high surrogate escape/],
    ["duplicate keys", bytes('{"instruction": "a", "output": "x", "output": "y"}'), "auto", 1, /duplicate key "output"/],
    ["nested duplicate keys", bytes('{"prompt": "p", "response": "r", "is_safe": false, "category": {"a": true, "a": false}}'), "beavertails", 1, /duplicate key "a"/],
    ["SST2 label as the string \"1\"", bytes(row({ sentence: "good", label: "1" })), "sst2", 1, /field "label" must be an integer from 0 to 1, got "1"/],
    ["SST2 label word", bytes(row({ sentence: "good", label: "positive" })), "auto", 1, /field "label" must be an integer from 0 to 1/],
    ["SST2 label out of range", bytes(row({ sentence: "good", label: 2 })), "sst2", 1, /from 0 to 1, got 2$/],
    ["AGNEWS label out of range", bytes(row({ text: "news", label: 4 })), "agnews", 1, /from 0 to 3, got 4$/],
    ["fractional label", bytes(row({ text: "news", label: 1.5 })), "agnews", 1, /got 1\.5$/],
    ["text field of the wrong type", bytes(row({ instruction: "a", output: 42 })), "alpaca", 1, /field "output" must be a string, got number/],
    ["null text field", bytes(row({ instruction: "a", input: null, output: "b" })), "alpaca", 1, /field "input" must be a string, got null/],
    ["boolean of the wrong type", bytes(row({ prompt: "p", response: "r", is_safe: "no" })), "beavertails", 1, /"is_safe" must be a boolean, got string/],
    ["GSM8K answer without ####", bytes(row({ question: "q", answer: "42" })), "gsm8k", 1, /must end with "#### N"/],
    ["GSM8K answer without a number", bytes(row({ question: "q", answer: "so #### many" })), "gsm8k", 1, /must end with "#### N"/],
    ["oversize row", bytes(row({ instruction: "x".repeat(70_000), output: "y" })), "auto", 1, /^row longer than 65536 bytes$/],
    ["invalid JSON", bytes('{"instruction": "a", "output": "b"'), "auto", 1, /^invalid JSON: /],
    ["not an object", bytes(alpaca, "\n[1, 2]\n"), "alpaca", 2, /row must be a JSON object, got array/],
    ["byte order mark inside the file", bytes(alpaca, "\n", [0xef, 0xbb, 0xbf], alpaca), "auto", 2, /invalid JSON/],
    ["unknown keys only", bytes('{"foo": "bar"}'), "auto", 1, /unrecognised row/],
  ];
  it.each(cases)("%s: refused at its line", (_, input, format, line, reason) => {
    const r = readAnyChunks(input, { format });
    expect(r.errorCount).toBe(1);
    expect(r.errors[0].line).toBe(line);
    expect(r.errors[0].reason).toMatch(reason);
  });

  it("names the field at fault", () => {
    expect(read(row({ sentence: "good", label: "1" }), { format: "sst2" }).errors[0].field).toBe("label");
  });
});

describe("JSON Lines", () => {
  it("reads every format, skipping blank lines and CRLF endings, with the lines of the rows", () => {
    const text = `\n${alpaca}\r\n   \n${row({ instruction: "Add.", input: "1+1", output: "2", category: "math", gold: "2" })}\n`;
    const r = readAnyChunks(text);
    expect(r).toMatchObject({ encoding: "jsonl", format: "alpaca", rows: 2, errorCount: 0 });
    expect(r.examples).toEqual([
      [2, { instruction: "Say hi.", input: "", output: "Hi!" }],
      [4, { instruction: "Add.", input: "1+1", output: "2", category: "math", gold: "2" }],
    ]);
    const formats: [string, object, Partial<Example>][] = [
      ["sst2", { sentence: "fine", label: 0, idx: 7 }, { input: "fine", output: "negative", gold: "negative" }],
      ["agnews", { text: "goal", label: 1 }, { input: "goal", output: "Sports" }],
      ["gsm8k", { question: "1+1?", answer: "1+1=2\n#### 2" }, { output: "1+1=2\nThe final answer is: 2", gold: "2" }],
      ["beavertails", { prompt: "p", response: "r", is_safe: false, category: { a: false, violence: true } }, { harmful: true, category: "violence" }],
      ["refusal", { question: "q", refusal: "no" }, { instruction: "q", output: "no", harmful: false }],
    ];
    for (const [format, value, expected] of formats) {
      const got = read(row(value));
      expect(got.format, format).toBe(format);
      expect(got.examples[0][1], format).toMatchObject(expected);
    }
  });

  it("takes the format of the first recognised row for every row", () => {
    const r = read(`${row({ sentence: "a", label: 1 })}\n${row({ text: "b", label: 1 })}\n`);
    expect(r.format).toBe("sst2");
    // A row of another format says so, since that is why the field is missing.
    expect(r.errors).toEqual([{ line: 2, reason: 'missing field "sentence": this row is agnews, but the file\'s rows are sst2 (the format of its first row)', field: "sentence" }]);
    // With the format given, and for a row of the same format, the problem is the field alone.
    expect(read(`${row({ text: "b", label: 1 })}\n`, { format: "sst2" }).errors[0].reason).toBe('missing field "sentence"');
    expect(read(`${row({ sentence: "a", label: 1 })}\n${row({ sentence: "b" })}\n`).errors[0].reason).toBe('missing field "label"');
  });

  it("accepts a byte order mark at the start, however the chunks fall", () => {
    const r = readAnyChunks(bytes([0xef, 0xbb, 0xbf], alpaca));
    expect(r.rows).toBe(1);
    expect(read(bytes([0xef, 0xbb])).errors[0].reason).toBe("not valid UTF-8");
    expect(read(bytes([0xef, 0xbb, 0xbf])).rows).toBe(0);
  });

  it("keeps the first errors and counts them all", () => {
    const text = Array.from({ length: 150 }, (_, i) => (i % 2 ? alpaca : "{")).join("\n");
    const r = read(text, { maxErrors: 100 });
    expect(r.errorCount).toBe(75);
    expect(r.rows).toBe(75);
    const many = read("{\n".repeat(250));
    expect(many.errors).toHaveLength(100);
    expect(many.errors.map((e) => e.line)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(many.errorCount).toBe(250);
  });

  it("bounds a row's bytes, not the file's, and goes on after a long row", () => {
    const long = row({ instruction: "x".repeat(200), output: "y" });
    const r = readAnyChunks(`${long}\n${alpaca}\n`, { maxRowBytes: 100 });
    expect(r.errors).toEqual([{ line: 1, reason: "row longer than 100 bytes" }]);
    expect(r.rows).toBe(1);
  });
});

describe("JSON arrays", () => {
  const items = [
    { instruction: 'Brackets ] } [ { and , "quotes" \\ inside', output: "ok" },
    { instruction: "é 😀", output: "x" },
  ];

  it("reads the items with the lines where they start", () => {
    const text = `\n [\n  ${row(items[0])},\n\n  ${row(items[1])}\n]\n`;
    const r = readAnyChunks(text);
    expect(r).toMatchObject({ encoding: "json-array", format: "alpaca", rows: 2, errorCount: 0 });
    expect(r.examples.map(([line, e]) => [line, e.instruction])).toEqual([[3, items[0].instruction], [5, items[1].instruction]]);
    expect(readAnyChunks(JSON.stringify(items, null, 2)).rows).toBe(2);
    expect(read("[]")).toMatchObject({ encoding: "json-array", rows: 0, errorCount: 0 });
  });

  it("reports bad items and goes on", () => {
    const text = `[${row(items[0])},\n{"instruction": "a", "instruction": "b", "output": "c"},\n{"instruction": "\\udc00", "output": "c"},\n"text", 12,\n${row(items[1])}]`;
    const r = readAnyChunks(text);
    expect(r.rows).toBe(2);
    expect(r.errors.map((e) => [e.line, e.reason])).toEqual([
      [2, expect.stringMatching(/duplicate key "instruction"/)],
      [3, expect.stringMatching(/lone low surrogate/)],
      [4, "row must be a JSON object, got string"],
      [4, "row must be a JSON object, got number"],
    ]);
  });

  it("refuses a broken array layout once, at its line", () => {
    const cases: [string, number, RegExp][] = [
      [`[${alpaca},]`, 1, /unexpected "\]" where a row should start/],
      [`[${alpaca},\n${alpaca}`, 2, /not closed/],
      [`[${alpaca}\n${alpaca}]`, 2, /expected "," or "\]" after a row/],
      [`[${alpaca}] x`, 1, /unexpected data after the array/],
      [`[\n{"instruction": "a", "output": "b`, 2, /unexpected end of file in the row starting at line 2/],
      ["[,]", 1, /where a row should start/],
    ];
    for (const [text, line, reason] of cases) {
      const r = readAnyChunks(text);
      expect(r.errors.at(-1), text).toMatchObject({ line, reason: expect.stringMatching(reason) });
    }
  });

  it("bounds an item's bytes while still finding its end", () => {
    const r = readAnyChunks(`[${row({ instruction: "x".repeat(300), output: "y" })}, ${alpaca}]`, { maxRowBytes: 100 });
    expect(r.errors).toEqual([{ line: 1, reason: "row longer than 100 bytes" }]);
    expect(r.rows).toBe(1);
  });

  it("follows the encoding it is given", () => {
    expect(read(alpaca, { encoding: "json-array" }).errors[0].reason).toMatch(/expected "\["/);
    expect(read(`[${alpaca}]`, { encoding: "jsonl" }).errors[0].reason).toBe("row must be a JSON object, got array");
  });
});
