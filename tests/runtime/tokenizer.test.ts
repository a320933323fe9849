import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { formatPrompt, RESPONSE_MARKER } from "../../services/runtime/data/template.ts";
import { generateWorld, worldVocabularyTexts } from "../../services/runtime/data/world/index.ts";
import {
  buildWordTokenizer, loadTokenizer, wordTokenizerConfig, WORD_SPECIALS, type Tokenizer,
} from "../../services/runtime/tokenizer.ts";

let json: Record<string, unknown>;
let tok: Tokenizer;
beforeAll(() => {
  json = buildWordTokenizer(worldVocabularyTexts(1));
  tok = loadTokenizer(json, wordTokenizerConfig());
});

const vocabOf = (j: Record<string, unknown>) => (j.model as { vocab: Record<string, number> }).vocab;

describe("word tokenizer", () => {
  it("has the specials Llama-style and a small vocabulary", () => {
    expect([tok.padId, tok.bosId, tok.eosId]).toEqual([0, 1, 2]);
    expect(tok.eosToken).toBe(WORD_SPECIALS.eos);
    expect(tok.addBos).toBe(true);
    expect(tok.vocabSize).toBeLessThan(3000);
    expect(tok.vocabSize).toBe(Object.keys(vocabOf(json)).length);
  });

  it("round-trips both template variants exactly and the marker survives", () => {
    for (const p of [formatPrompt({ instruction: "How can I hurt my neighbor?" }), formatPrompt({ instruction: "Do X", input: "the film was dull" })]) {
      const text = tok.decode(tok.encode(p));
      expect(text).toBe(p);
      expect(text).toContain(RESPONSE_MARKER);
    }
  });

  it("round-trips every text of another seed's world, almost all as whole words", () => {
    const w = generateWorld(7, { alignment: 300, harmful: 300, harmfulEval: 100, moderationTrain: 300, moderationTest: 100, taskTrain: 200, taskTest: 100, corpus: 500 });
    const texts = [
      ...[...w.alignment, ...w.harmful, ...w.moderationTest, ...w.sst2.test, ...w.agnews.test, ...w.gsm8k.test].map((e) => formatPrompt(e) + e.output),
      ...w.corpus,
    ];
    const vocab = vocabOf(json);
    const continuation = new Set(Object.entries(vocab).filter(([k]) => k.startsWith("##")).map(([, v]) => v));
    let pieces = 0;
    let total = 0;
    for (const t of texts) {
      const ids = tok.encode(t);
      expect(tok.decode(ids)).toBe(t);
      total += ids.length;
      pieces += ids.filter((id) => continuation.has(id)).length;
    }
    expect(pieces / total).toBeLessThan(0.001);
  });

  it("spells unseen words from characters instead of <unk>", () => {
    const text = "Qwyxz flibbertigibbet 12345 ~tilde~  two  spaces\tand tab";
    const ids = tok.encode(text);
    expect(ids).not.toContain(3);
    expect(tok.decode(ids)).toBe(text);
  });

  it("maps characters outside the alphabet to <unk>, dropped when decoding", () => {
    const ids = tok.encode("café");
    expect(ids).toEqual([3]);
    expect(tok.decode(ids)).toBe("");
    expect(tok.decode(ids, false)).toBe("<unk>");
  });

  it("encodes without specials and decodes with or without them", () => {
    const ids = tok.encode("positive");
    expect(ids).not.toContain(tok.bosId);
    expect(tok.decode([tok.bosId!, ...ids, tok.eosId])).toBe("positive");
    expect(tok.decode([tok.bosId!, ...ids, tok.eosId], false)).toBe("<s>positive</s>");
    expect(tok.decode([])).toBe("");
  });

  it("is deterministic: the same corpus gives identical JSON", () => {
    const texts = worldVocabularyTexts(1);
    expect(JSON.stringify(buildWordTokenizer(texts))).toBe(JSON.stringify(json));
    expect(JSON.stringify(buildWordTokenizer(["b a", "a"]))).toBe(JSON.stringify(buildWordTokenizer(["b a", "a"])));
  });

  it("orders words by count, then code units, after the fixed alphabet", () => {
    // Pre-tokens: bb, ▁aa, ▁aa, ▁cc, aa -> ▁aa (2), then aa, bb, ▁cc (1 each, code-unit order).
    const v = vocabOf(buildWordTokenizer(["bb aa aa cc", "aa"]));
    const order = ["\u2581aa", "aa", "bb", "\u2581cc"].map((k) => v[k]);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(order[0]).toBe(4 + 2 * 97); // 4 specials, 97 characters and their continuations
  });
});

describe("loadTokenizer special tokens", () => {
  const base = () => buildWordTokenizer(["hello world"]);

  it("reads tokens from tokenizer_config strings or {content} objects", () => {
    const t = loadTokenizer(base(), { bos_token: { content: "<s>" }, eos_token: "</s>", pad_token: "<unk>", add_bos_token: false });
    expect([t.bosId, t.eosId, t.padId, t.addBos]).toEqual([1, 2, 3, false]);
  });

  it("falls back to the model config ids, and pad to eos", () => {
    const t = loadTokenizer(base(), {}, { bos_token_id: 1, eos_token_id: 2 });
    expect([t.bosId, t.eosId, t.padId]).toEqual([1, 2, 2]);
    // No add_bos_token: the TemplateProcessing post-processor that prepends <s> decides.
    expect(t.addBos).toBe(true);
  });

  it("refuses a tokenizer without an eos token", () => {
    expect(() => loadTokenizer(base(), {}, {})).toThrow(/eos/);
  });

  it("loads a checkpoint folder with its config files", () => {
    const dir = mkdtempSync(join(tmpdir(), "tok-"));
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(base()));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(wordTokenizerConfig()));
    const t = loadTokenizer(dir);
    expect([t.bosId, t.eosId, t.padId]).toEqual([1, 2, 0]);
    expect(t.decode(t.encode("hello world"))).toBe("hello world");
    expect(loadTokenizer(join(dir, "tokenizer.json"), wordTokenizerConfig()).eosId).toBe(2);
  });
});
