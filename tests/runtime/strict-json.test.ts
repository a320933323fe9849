import { describe, expect, it } from "vitest";
import { JsonSyntaxError, MAX_JSON_DEPTH, parseStrictJson } from "../../services/runtime/strict-json.ts";
import { Rng } from "../../services/runtime/rng.ts";

/** Null-prototype objects compared as plain ones. */
const plain = (v: unknown): unknown =>
  Array.isArray(v) ? v.map(plain) : typeof v === "object" && v !== null ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)])) : v;

function refusal(text: string): string {
  try {
    parseStrictJson(text);
  } catch (err) {
    expect(err).toBeInstanceOf(JsonSyntaxError);
    return (err as Error).message;
  }
  throw new Error(`accepted ${text}`);
}

/** A random JSON value with distinct keys, strings drawn to hit escapes and astral characters. */
function randomValue(rng: Rng, depth: number): unknown {
  const pick = Math.floor(rng.next() * (depth > 3 ? 4 : 6));
  const text = () => Array.from({ length: Math.floor(rng.next() * 6) }, () => ["a", "é", '"', "\\", "\n", "\u0001", "😀", "\u2028", "/"][Math.floor(rng.next() * 9)]).join("");
  switch (pick) {
    case 0: return rng.next() < 0.5 ? null : rng.next() < 0.5;
    case 1: return Math.round((rng.next() - 0.5) * 1e6) / (rng.next() < 0.5 ? 1 : 1000);
    case 2: return text();
    case 3: return rng.next() * 1e300;
    case 4: return Array.from({ length: Math.floor(rng.next() * 4) }, () => randomValue(rng, depth + 1));
    default: return Object.fromEntries(Array.from({ length: Math.floor(rng.next() * 4) }, (_, i) => [`${text()}${i}`, randomValue(rng, depth + 1)]));
  }
}

describe("parseStrictJson", () => {
  it("agrees with JSON.parse on valid documents", () => {
    const docs = [
      '{"a": [1, -2.5e3, 0, 0.25, 1E-2, true, false, null], "b": {"c": "d\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"}}',
      ' [ ] ', "{}", '"x"', "-0", "1e400", '{"a":{"a":{"a":1}}}', '[{"a":1},{"a":1}]',
    ];
    for (const doc of docs) expect(plain(parseStrictJson(doc)), doc).toEqual(JSON.parse(doc));
    const rng = new Rng(7);
    for (let i = 0; i < 300; i++) {
      const text = JSON.stringify(randomValue(rng, 0), null, i % 2 ? 1 : undefined);
      expect(plain(parseStrictJson(text)), text).toEqual(JSON.parse(text));
    }
  });

  it("reports every number literal as written", () => {
    const seen: string[] = [];
    parseStrictJson('{"shape": [2.0, 1e1, -0, 7], "n": 3}', { onNumber: (n) => seen.push(n) });
    expect(seen).toEqual(["2.0", "1e1", "-0", "7", "3"]);
  });

  it("refuses duplicate keys at any depth, also when escapes spell the same key", () => {
    expect(refusal('{"a": 1, "a": 2}')).toMatch(/duplicate key "a" at character 10/);
    expect(refusal('{"x": [{"b": 1, "c": {"d": 0, "d": 0}}]}')).toMatch(/duplicate key "d" in "x\[\]\.c"/);
    expect(refusal('{"a": 1, "\\u0061": 2}')).toMatch(/duplicate key "a"/);
    expect(plain(parseStrictJson('[{"a": 1}, {"a": 2}]'))).toEqual([{ a: 1 }, { a: 2 }]);
  });

  it("refuses lone surrogate escapes and keeps pairs", () => {
    expect(refusal('"\\ud800"')).toMatch(/lone high surrogate escape at character 2/);
    expect(refusal('"\\udc00x"')).toMatch(/lone low surrogate/);
    expect(refusal('"\\ud800\\u0041"')).toMatch(/lone high surrogate/);
    expect(refusal('"\\ud800\\n"')).toMatch(/lone high surrogate/);
    expect(refusal('{"\\udfff": 1}')).toMatch(/lone low surrogate/);
    expect(parseStrictJson('"\\ud83d\\ude00"')).toBe("😀");
  });

  it("refuses what JSON does not allow", () => {
    for (const bad of [
      "", "[1,]", '{"a":1,}', "01", "+1", "1.", ".5", "NaN", "Infinity", "'a'", '{a: 1}', '"a\tb"', '"\\x41"', '"\\u12"',
      "[1] [2]", "tru", "[", '{"a"}', '{"a" 1}', "\u00a01", '"unterminated',
    ]) {
      refusal(bad);
    }
  });

  it("bounds nesting", () => {
    expect(plain(parseStrictJson("[".repeat(MAX_JSON_DEPTH) + "]".repeat(MAX_JSON_DEPTH)))).toBeInstanceOf(Array);
    expect(refusal("[".repeat(MAX_JSON_DEPTH + 1) + "]".repeat(MAX_JSON_DEPTH + 1))).toMatch(/nested deeper than 64/);
    expect(refusal('{"a":'.repeat(10_000) + "1" + "}".repeat(10_000))).toMatch(/nested deeper/);
  });

  it("keeps __proto__ an ordinary key", () => {
    const value = parseStrictJson('{"__proto__": {"polluted": true}, "a": 1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(value)).toBe(null);
    expect(Object.keys(value)).toEqual(["__proto__", "a"]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});
