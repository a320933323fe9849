import { describe, expect, it } from "vitest";
import { formatPrompt, responseOf } from "../../services/runtime/data/template.ts";

// The reference's template, written out here independently of template.ts (docs/method.md#data-template).
const WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
const NO_INPUT =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

describe("Alpaca template", () => {
  it("matches the reference with an input", () => {
    expect(formatPrompt({ instruction: "Do X", input: "some text" })).toBe(
      WITH_INPUT.replace("{instruction}", "Do X").replace("{input}", "some text"),
    );
  });
  it("uses the no-input variant for an empty or absent input", () => {
    const expected = NO_INPUT.replace("{instruction}", "Do X");
    expect(formatPrompt({ instruction: "Do X", input: "" })).toBe(expected);
    expect(formatPrompt({ instruction: "Do X" })).toBe(expected);
  });
  it("keeps slot markers and $ patterns in user text literal", () => {
    const p = formatPrompt({ instruction: "say {input} $& $1", input: "in {instruction}" });
    expect(p).toContain("### Instruction:\nsay {input} $& $1\n\n### Input:\nin {instruction}\n\n");
  });
  it("responseOf returns the text after the marker", () => {
    const prompt = formatPrompt({ instruction: "Q" });
    expect(responseOf(prompt + " positive\n")).toBe("positive");
    expect(responseOf("no marker here ")).toBe("no marker here");
    expect(responseOf(prompt + "a ### Response: b")).toBe("a ### Response: b");
  });
});
