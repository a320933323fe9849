import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { collate, exampleIds, IGNORE_INDEX } from "../../services/runtime/data/collate.ts";
import { formatPrompt } from "../../services/runtime/data/template.ts";
import { loadTokenizer, type Tokenizer } from "../../services/runtime/tokenizer.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));

/**
 * A toy tokenizer with hand-checkable ids: a text starting with a prompt of the table below
 * encodes it to that run of ids; the rest of a text is one id per character (a=10...).
 */
const PROMPTS = new Map<string, number[]>([
  [formatPrompt({ instruction: "p" }), [7, 8]],
  [formatPrompt({ instruction: "long" }), [7, 7, 7, 7, 7]],
]);
function toy(addBos: boolean): Tokenizer {
  return {
    encode: (text) => {
      const prompt = [...PROMPTS.keys()].find((p) => text.startsWith(p));
      return [...(prompt ? PROMPTS.get(prompt)! : []), ...[...text.slice(prompt?.length ?? 0)].map((c) => c.charCodeAt(0) - 87)];
    },
    decode: () => "",
    bosId: 1,
    eosId: 2,
    padId: 0,
    addBos,
    vocabSize: 40,
    eosToken: "</s>",
  };
}
const X = IGNORE_INDEX;

describe("collate", () => {
  it("labels response tokens and eos only, right-pads to the longest row", () => {
    const b = collate([{ instruction: "p", input: "", output: "ab" }, { instruction: "p", input: "", output: "c" }], toy(true));
    expect([b.batch, b.seqLen]).toEqual([2, 6]);
    // [bos, prompt 7 8, a=10 b=11, eos] and [bos, 7 8, c=12, eos, pad]
    expect([...b.inputIds]).toEqual([1, 7, 8, 10, 11, 2, 1, 7, 8, 12, 2, 0]);
    expect([...b.attentionMask]).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
    expect([...b.labels]).toEqual([X, X, X, 10, 11, 2, X, X, X, 12, 2, X]);
    expect([b.truncated, b.unsupervised]).toEqual([0, 0]);
  });

  it("adds no bos when the tokenizer does not", () => {
    const b = collate([{ instruction: "p", input: "", output: "a" }], toy(false));
    expect([...b.inputIds]).toEqual([7, 8, 10, 2]);
    expect([...b.labels]).toEqual([X, X, 10, 2]);
  });

  it('labels every real token in mode "all", and plain texts in any mode', () => {
    const b = collate([{ instruction: "p", input: "", output: "a" }, "abc"], toy(true), { mode: "all" });
    expect([...b.inputIds]).toEqual([1, 7, 8, 10, 2, 1, 10, 11, 12, 2]);
    expect([...b.labels]).toEqual([1, 7, 8, 10, 2, 1, 10, 11, 12, 2]);
    const r = collate(["ab"], toy(true));
    expect([...r.labels]).toEqual([1, 10, 11, 2]);
  });

  it("truncates from the right at maxLength, dropping eos", () => {
    const b = collate([{ instruction: "p", input: "", output: "abcd" }], toy(true), { maxLength: 5 });
    expect([...b.inputIds]).toEqual([1, 7, 8, 10, 11]);
    expect([...b.labels]).toEqual([X, X, X, 10, 11]);
    expect(b.truncated).toBe(1);
  });

  it("keeps a row whose prompt fills maxLength with no labels, and counts it", () => {
    const b = collate([{ instruction: "long", input: "", output: "a" }, { instruction: "p", input: "", output: "a" }], toy(true), { maxLength: 4 });
    expect([...b.inputIds]).toEqual([1, 7, 7, 7, 1, 7, 8, 10]);
    expect([...b.labels]).toEqual([X, X, X, X, X, X, X, 10]);
    expect([b.truncated, b.unsupervised]).toEqual([2, 1]); // the second row loses its eos
  });

  it("tokenizes prompt and output as one text and labels from the prompt's own length, as the reference", () => {
    // The fixtures' Llama-2-style tokenizer marks a word's start with "▁": tokenized alone, an
    // answer would start with a space token that the joined text does not have.
    const t = loadTokenizer(join(FIXTURES, "llama-f32-gqa"));
    const example = { instruction: "Is the cat happy?", input: "", output: "positive" };
    const prompt = t.encode(formatPrompt(example));
    const joined = t.encode(formatPrompt(example) + example.output);
    expect(joined.slice(0, prompt.length)).toEqual(prompt);
    expect(joined.slice(prompt.length)).not.toEqual(t.encode(example.output));
    const b = collate([example], t);
    expect([...b.inputIds]).toEqual([t.bosId, ...joined, t.eosId]);
    expect([...b.labels]).toEqual([t.bosId, ...joined, t.eosId].map((id, i) => (i <= prompt.length ? X : id)));
    expect(exampleIds(t, example)).toEqual({ ids: [t.bosId, ...joined], promptLength: prompt.length + 1 });
  });

  it("defaults to maxLength 200 and rejects bad input", () => {
    const b = collate(["a".repeat(300)], toy(true));
    expect(b.seqLen).toBe(200);
    expect(() => collate([], toy(true))).toThrow(RangeError);
    expect(() => collate(["a"], toy(true), { maxLength: 0 })).toThrow(RangeError);
  });
});
