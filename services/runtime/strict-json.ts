/**
 * A strict JSON parser for what clients send: dataset rows and checkpoint headers. JSON.parse
 * keeps the last of duplicate keys, accepts lone surrogate escapes ("\ud800") and reads 2.0
 * as an integer; a value parsed that way is not the one its writer meant, so this parser
 * refuses the first two, reports every number literal as written on request, and bounds nesting so a hostile row cannot exhaust
 * the stack. Otherwise it follows RFC 8259 exactly. Objects have no prototype, so a
 * "__proto__" key is an ordinary key.
 */

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    /** 0-based index in the text. */
    readonly offset: number,
  ) {
    super(`${message} at character ${offset + 1}`);
    this.name = "JsonSyntaxError";
  }
}

/** A key that appears twice in one object; `path` names the object ("" at the top, "a.b", "a[]"). */
export class DuplicateKeyError extends JsonSyntaxError {
  constructor(
    readonly key: string,
    readonly path: string,
    offset: number,
  ) {
    super(`duplicate key ${JSON.stringify(key)}${path ? ` in "${path}"` : ""}`, offset);
    this.name = "DuplicateKeyError";
  }
}

export interface StrictJsonOptions {
  /** Called with every number literal as written (e.g. to refuse "2.0" where an integer is meant). */
  onNumber?: (literal: string) => void;
}

export const MAX_JSON_DEPTH = 64;

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
/** A run of string characters needing no attention: not a quote, backslash or control character. */
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const HEX4 = /^[0-9a-fA-F]{4}$/;
const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

export function parseStrictJson(text: string, options: StrictJsonOptions = {}): unknown {
  const parser = new Parser(text, options.onNumber);
  const value = parser.value(0, "");
  parser.whitespace();
  if (parser.pos < text.length) parser.fail("unexpected data after the value");
  return value;
}

class Parser {
  pos = 0;
  constructor(
    private readonly text: string,
    private readonly onNumber?: (literal: string) => void,
  ) {}

  fail(message: string, at = this.pos): never {
    throw new JsonSyntaxError(message, at);
  }

  whitespace(): void {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return;
      this.pos++;
    }
  }

  value(depth: number, path: string): unknown {
    this.whitespace();
    const c = this.text[this.pos];
    if (c === "{") return this.object(depth + 1, path);
    if (c === "[") return this.array(depth + 1, path);
    if (c === '"') return this.string();
    for (const [word, value] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return value;
      }
    }
    NUMBER.lastIndex = this.pos;
    const m = NUMBER.exec(this.text);
    if (m && m[0] !== "") {
      this.pos += m[0].length;
      this.onNumber?.(m[0]);
      return Number(m[0]);
    }
    return this.fail(c === undefined ? "unexpected end of input" : `unexpected ${JSON.stringify(c)}`);
  }

  object(depth: number, path: string): Record<string, unknown> {
    if (depth > MAX_JSON_DEPTH) this.fail(`nested deeper than ${MAX_JSON_DEPTH} levels`);
    this.pos++;
    const result: Record<string, unknown> = Object.create(null);
    const seen = new Set<string>();
    this.whitespace();
    if (this.text[this.pos] === "}") {
      this.pos++;
      return result;
    }
    for (;;) {
      this.whitespace();
      const at = this.pos;
      if (this.text[this.pos] !== '"') this.fail("expected a string key");
      const key = this.string();
      if (seen.has(key)) throw new DuplicateKeyError(key, path, at);
      seen.add(key);
      this.whitespace();
      if (this.text[this.pos] !== ":") this.fail('expected ":"');
      this.pos++;
      result[key] = this.value(depth, path === "" ? key : `${path}.${key}`);
      this.whitespace();
      const next = this.text[this.pos++];
      if (next === "}") return result;
      if (next !== ",") this.fail('expected "," or "}"', this.pos - 1);
    }
  }

  array(depth: number, path: string): unknown[] {
    if (depth > MAX_JSON_DEPTH) this.fail(`nested deeper than ${MAX_JSON_DEPTH} levels`);
    this.pos++;
    const result: unknown[] = [];
    this.whitespace();
    if (this.text[this.pos] === "]") {
      this.pos++;
      return result;
    }
    for (;;) {
      result.push(this.value(depth, `${path}[]`));
      this.whitespace();
      const next = this.text[this.pos++];
      if (next === "]") return result;
      if (next !== ",") this.fail('expected "," or "]"', this.pos - 1);
    }
  }

  string(): string {
    const t = this.text;
    this.pos++;
    let out = "";
    for (;;) {
      PLAIN.lastIndex = this.pos;
      const run = PLAIN.exec(t)![0];
      out += run;
      this.pos += run.length;
      const c = t[this.pos];
      if (c === '"') {
        this.pos++;
        return out;
      }
      if (c === undefined) this.fail("unterminated string");
      if (c !== "\\") this.fail("control character in a string (escape it)");
      const e = t[this.pos + 1];
      if (e === "u") {
        out += this.unicodeEscape();
      } else {
        if (!Object.hasOwn(ESCAPES, e)) this.fail(`invalid escape "\\${e ?? ""}"`);
        out += ESCAPES[e];
        this.pos += 2;
      }
    }
  }

  /** A \uXXXX escape at pos, with its low half when it is a high surrogate; lone halves are refused. */
  private unicodeEscape(): string {
    const at = this.pos;
    const unit = this.hex4(at);
    this.pos += 6;
    if (unit >= 0xdc00 && unit <= 0xdfff) this.fail("lone low surrogate escape", at);
    if (unit < 0xd800 || unit > 0xdbff) return String.fromCharCode(unit);
    const low = this.text.startsWith("\\u", this.pos) ? this.hex4(this.pos) : -1;
    if (low < 0xdc00 || low > 0xdfff) this.fail("lone high surrogate escape", at);
    this.pos += 6;
    return String.fromCharCode(unit, low);
  }

  private hex4(at: number): number {
    const digits = this.text.slice(at + 2, at + 6);
    if (!HEX4.test(digits)) this.fail("invalid \\u escape", at);
    return parseInt(digits, 16);
  }
}
