/**
 * Reads a dataset file incrementally, chunk by chunk, holding at most one row: JSON Lines
 * are split at newline bytes, a JSON array at its top-level commas (structural bytes are
 * ASCII, and UTF-8 never uses ASCII bytes inside a multi-byte character, so splitting
 * bytes is safe). Each row is then decoded as strict UTF-8, parsed by the strict JSON
 * parser and converted by its format: the one path for uploads and for training data.
 * Bad rows are collected with their line (where the row starts), so one pass reports them.
 */
import { type Row, type RowFormat, RowProblem, asRow, convertRow, detectFormat } from "./row-formats.ts";
import { JsonSyntaxError, parseStrictJson } from "../strict-json.ts";
import type { Example } from "./template.ts";

export type DatasetEncoding = "jsonl" | "json-array";

export interface RowError {
  /** 1-based line of the file where the row starts. */
  line: number;
  reason: string;
  /** The row's field at fault, when one is. */
  field?: string;
}

export interface ReaderOptions {
  /** Every row's format; "auto" (the default) takes the first recognised row's. */
  format?: RowFormat | "auto";
  /** "auto" (the default): "[" as the first non-blank byte is a JSON array, else JSON Lines. */
  encoding?: DatasetEncoding | "auto";
  /** Longest row in bytes (default 64 KiB). */
  maxRowBytes?: number;
  /** Errors kept (default 100); later ones are only counted. */
  maxErrors?: number;
  /** Receives each good row, in order. */
  onExample?: (example: Example, line: number) => void;
}

export interface ReadSummary {
  /** Undefined when the file held nothing but blanks. */
  encoding: DatasetEncoding | undefined;
  /** Undefined when no row was recognised. */
  format: RowFormat | undefined;
  /** Good rows. */
  rows: number;
  errors: RowError[];
  /** Every bad row, including those beyond maxErrors. */
  errorCount: number;
}

export const DEFAULT_MAX_ROW_BYTES = 64 * 1024;
export const DEFAULT_MAX_ERRORS = 100;

const BOM = [0xef, 0xbb, 0xbf];
const NEWLINE = 0x0a;
const isBlank = (b: number) => b === 0x20 || b === 0x09 || b === 0x0d || b === NEWLINE;

/** What a splitter hands on: a row's bytes (undefined when over the row limit), or a broken layout. */
interface Sink {
  row(line: number, bytes: Uint8Array | undefined): void;
  broken(line: number, reason: string): void;
}

export class DatasetReader {
  private readonly maxRowBytes: number;
  private readonly maxErrors: number;
  private readonly decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  /** The first bytes, held until a byte order mark is ruled in or out. */
  private head: Uint8Array | undefined = new Uint8Array(0);
  private splitter: JsonLines | JsonArray | undefined;
  /** Lines of the leading blanks, before the layout is known. */
  private line = 1;
  private format: RowFormat | undefined;
  private rows = 0;
  private readonly errors: RowError[] = [];
  private errorTotal = 0;

  constructor(private readonly options: ReaderOptions = {}) {
    this.maxRowBytes = options.maxRowBytes ?? DEFAULT_MAX_ROW_BYTES;
    this.maxErrors = options.maxErrors ?? DEFAULT_MAX_ERRORS;
    if (options.format && options.format !== "auto") this.format = options.format;
  }

  /** Bad rows so far. */
  get errorCount(): number {
    return this.errorTotal;
  }

  push(chunk: Uint8Array): void {
    if (this.head) {
      const head = concat(this.head, chunk);
      if (head.length < BOM.length && BOM.every((b, i) => i >= head.length || head[i] === b)) {
        this.head = head;
        return;
      }
      this.head = undefined;
      chunk = BOM.every((b, i) => head[i] === b) ? head.subarray(BOM.length) : head;
    }
    this.feed(chunk);
  }

  end(): ReadSummary {
    // A file shorter than a byte order mark.
    if (this.head) this.feed(this.head);
    this.head = undefined;
    this.splitter?.end();
    const encoding = this.splitter instanceof JsonArray ? "json-array" : this.splitter ? "jsonl" : undefined;
    return { encoding, format: this.format, rows: this.rows, errors: this.errors, errorCount: this.errorTotal };
  }

  private feed(chunk: Uint8Array): void {
    if (!this.splitter) {
      let i = 0;
      for (; i < chunk.length && isBlank(chunk[i]); i++) if (chunk[i] === NEWLINE) this.line++;
      if (i === chunk.length) return;
      const array = this.options.encoding === "json-array" || (this.options.encoding !== "jsonl" && chunk[i] === 0x5b);
      const sink: Sink = { row: (line, bytes) => this.row(line, bytes), broken: (line, reason) => this.fail(line, new RowProblem(reason)) };
      this.splitter = array ? new JsonArray(this.line, this.maxRowBytes, sink) : new JsonLines(this.line, this.maxRowBytes, sink);
      chunk = chunk.subarray(i);
    }
    this.splitter.push(chunk);
  }

  private row(line: number, bytes: Uint8Array | undefined): void {
    try {
      if (!bytes) throw new RowProblem(`row longer than ${this.maxRowBytes} bytes`);
      let text: string;
      try {
        text = this.decoder.decode(bytes);
      } catch {
        throw new RowProblem("not valid UTF-8");
      }
      // A JSON Lines row may end in "\r" and may be blank; an array item never is.
      if (/^[ \t\r]*$/.test(text)) return;
      let value: unknown;
      try {
        value = parseStrictJson(text);
      } catch (err) {
        if (err instanceof JsonSyntaxError) throw new RowProblem(`invalid JSON: ${err.message}`);
        throw err;
      }
      const row = asRow(value);
      // Set by an earlier row: neither given by the caller nor this row's own.
      const inferred = this.format !== undefined && (this.options.format ?? "auto") === "auto";
      this.format ??= detectFormat(row);
      const example = convertRowOf(row, this.format, inferred);
      this.rows++;
      this.options.onExample?.(example, line);
    } catch (err) {
      if (!(err instanceof RowProblem)) throw err;
      this.fail(line, err);
    }
  }

  private fail(line: number, problem: RowProblem): void {
    this.errorTotal++;
    if (this.errors.length < this.maxErrors) this.errors.push({ line, reason: problem.message, ...(problem.field ? { field: problem.field } : {}) });
  }
}

/**
 * convertRow; a row missing a field of the format that an earlier row set (`inferred`) may be of
 * another format: the problem then says which, since a file holds rows of one format.
 */
function convertRowOf(row: Row, format: RowFormat, inferred: boolean) {
  try {
    return convertRow(row, format);
  } catch (err) {
    if (!(err instanceof RowProblem) || !inferred) throw err;
    let own: RowFormat | undefined;
    try {
      own = detectFormat(row);
    } catch {
      throw err;
    }
    if (own === format) throw err;
    throw new RowProblem(`${err.message}: this row is ${own}, but the file's rows are ${format} (the format of its first row)`, err.field);
  }
}

/** Collects one row's bytes across chunks, up to a limit; past it, only counts. */
class RowBytes {
  private parts: Uint8Array[] = [];
  /** parts before this index are copies; the rest are views of the caller's chunk. */
  private copied = 0;
  private size = 0;
  private over = false;
  constructor(private readonly max: number) {}

  add(bytes: Uint8Array): void {
    if (this.over || bytes.length === 0) return;
    this.size += bytes.length;
    if (this.size > this.max) {
      this.over = true;
      this.parts = [];
      this.copied = 0;
    } else {
      this.parts.push(bytes);
    }
  }

  get empty(): boolean {
    return this.size === 0;
  }

  /** Copies the views, so the caller's chunk can be released; each byte is copied once. */
  detach(): void {
    for (; this.copied < this.parts.length; this.copied++) this.parts[this.copied] = Buffer.from(this.parts[this.copied]);
  }

  take(): Uint8Array | undefined {
    const bytes = this.over ? undefined : this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    this.parts = [];
    this.copied = 0;
    this.size = 0;
    this.over = false;
    return bytes;
  }
}

class JsonLines {
  private readonly current: RowBytes;
  constructor(
    private line: number,
    maxRowBytes: number,
    private readonly sink: Sink,
  ) {
    this.current = new RowBytes(maxRowBytes);
  }

  push(chunk: Uint8Array): void {
    let start = 0;
    for (let nl = chunk.indexOf(NEWLINE); nl >= 0; nl = chunk.indexOf(NEWLINE, start)) {
      this.current.add(chunk.subarray(start, nl));
      this.sink.row(this.line++, this.current.take());
      start = nl + 1;
    }
    this.current.add(chunk.subarray(start));
    this.current.detach();
  }

  end(): void {
    if (!this.current.empty) this.sink.row(this.line, this.current.take());
  }
}

type ArrayState = "open" | "first" | "item" | "in-item" | "after-item" | "closed" | "broken";

/** Splits `[item, item, ...]` into items without parsing them: depth and strings are tracked, nothing more. */
class JsonArray {
  private state: ArrayState = "open";
  private readonly current: RowBytes;
  private itemLine = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(
    private line: number,
    maxRowBytes: number,
    private readonly sink: Sink,
  ) {
    this.current = new RowBytes(maxRowBytes);
  }

  push(chunk: Uint8Array): void {
    let itemStart = this.state === "in-item" ? 0 : -1;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.state === "in-item") {
        const end = this.scan(b);
        if (end === "continue") {
          if (b === NEWLINE) this.line++;
          continue;
        }
        this.current.add(chunk.subarray(itemStart, end === "after" ? i + 1 : i));
        this.sink.row(this.itemLine, this.current.take());
        this.state = "after-item";
        itemStart = -1;
        if (end === "after") continue;
      }
      if (b === NEWLINE) this.line++;
      if (isBlank(b) || this.state === "broken") continue;
      switch (this.state) {
        case "open":
          if (b !== 0x5b) this.break('expected "[" (a JSON array of rows)');
          else this.state = "first";
          break;
        case "first":
        case "item":
          if (b === 0x5d && this.state === "first") this.state = "closed";
          else if (b === 0x5d || b === 0x7d || b === 0x2c) this.break(`unexpected "${String.fromCharCode(b)}" where a row should start`);
          else {
            this.state = "in-item";
            this.itemLine = this.line;
            this.depth = 0;
            this.inString = false;
            itemStart = i;
            // Only "]", "}", "," and blanks end an item at its first byte, and those were handled above.
            this.scan(b);
          }
          break;
        case "after-item":
          if (b === 0x2c) this.state = "item";
          else if (b === 0x5d) this.state = "closed";
          else this.break('expected "," or "]" after a row');
          break;
        case "closed":
          this.break("unexpected data after the array");
          break;
      }
    }
    if (this.state === "in-item") {
      this.current.add(chunk.subarray(itemStart));
      this.current.detach();
    }
  }

  end(): void {
    if (this.state === "in-item") this.break(`unexpected end of file in the row starting at line ${this.itemLine}`);
    else if (this.state !== "closed" && this.state !== "broken") this.break('unexpected end of file: the array is not closed with "]"');
  }

  /** One byte of an item: "continue", or where the item ended ("before" this byte or "after" it). */
  private scan(b: number): "continue" | "before" | "after" {
    if (this.inString) {
      if (this.escaped) this.escaped = false;
      else if (b === 0x5c) this.escaped = true;
      else if (b === 0x22) this.inString = false;
      return "continue";
    }
    if (b === 0x22) this.inString = true;
    else if (b === 0x7b || b === 0x5b) this.depth++;
    else if (b === 0x7d || b === 0x5d) {
      if (this.depth === 0) return "before";
      return --this.depth === 0 ? "after" : "continue";
    } else if (this.depth === 0 && (b === 0x2c || isBlank(b))) return "before";
    return "continue";
  }

  private break(reason: string): void {
    this.sink.broken(this.line, reason);
    this.state = "broken";
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  return a.length === 0 ? b : Buffer.concat([a, b]);
}
