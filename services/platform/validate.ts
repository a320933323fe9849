import type { ConnectError } from "@connectrpc/connect";
import { invalidArgument } from "./errors.ts";

/** Violations listed in one error: a 16 MiB repeated field must not become a larger error. */
export const MAX_VIOLATIONS = 100;
/** Longest echo of a client's string in an error message. */
const MAX_ECHO = 64;

/** A client's string as an error may quote it: bounded, so a huge value is not sent back or logged. */
export function echo(value: string): string {
  return value.length <= MAX_ECHO ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, MAX_ECHO))}... (${value.length} characters)`;
}

interface Bounds {
  min?: number;
  max?: number;
  /** Exclusive bounds: the value must be strictly greater / smaller. */
  above?: number;
  below?: number;
  integer?: boolean;
}

/**
 * Collects every field violation of a request, then throws one INVALID_ARGUMENT that
 * names them all (a client fixes its request in one round trip, not one per field).
 * Field paths are the proto field names as clients see them, e.g. "spec.lora.rank".
 */
export class RequestValidator {
  private readonly violations: { field: string; description: string }[] = [];
  private dropped = 0;

  fail(field: string, description: string): this {
    if (this.violations.length < MAX_VIOLATIONS) this.violations.push({ field, description });
    else this.dropped++;
    return this;
  }

  /** A message or string field that must be present and non-empty. */
  required(field: string, value: unknown): this {
    if (value === undefined || value === null || value === "") this.fail(field, "is required");
    return this;
  }

  /** A number within bounds; undefined (an unset optional) passes. NaN and infinities fail. */
  number(field: string, value: number | undefined, bounds: Bounds = {}): this {
    if (value === undefined) return this;
    if (!Number.isFinite(value)) return this.fail(field, `must be a finite number, got ${value}`);
    if (bounds.integer && !Number.isInteger(value)) return this.fail(field, `must be an integer, got ${value}`);
    if (bounds.min !== undefined && value < bounds.min) return this.fail(field, `must be >= ${bounds.min}, got ${value}`);
    if (bounds.max !== undefined && value > bounds.max) return this.fail(field, `must be <= ${bounds.max}, got ${value}`);
    if (bounds.above !== undefined && value <= bounds.above) return this.fail(field, `must be > ${bounds.above}, got ${value}`);
    if (bounds.below !== undefined && value >= bounds.below) return this.fail(field, `must be < ${bounds.below}, got ${value}`);
    return this;
  }

  /** A list whose length is within bounds. */
  count(field: string, items: readonly unknown[], bounds: { min?: number; max?: number }): this {
    if (bounds.min !== undefined && items.length < bounds.min) this.fail(field, `needs at least ${bounds.min} item(s), got ${items.length}`);
    if (bounds.max !== undefined && items.length > bounds.max) this.fail(field, `allows at most ${bounds.max} item(s), got ${items.length}`);
    return this;
  }

  /** A value that must be one of a fixed set. */
  oneOf(field: string, value: string, allowed: readonly string[]): this {
    if (!allowed.includes(value)) this.fail(field, `must be one of ${allowed.join(", ")}, got ${echo(value)}`);
    return this;
  }

  /** A string of at most `max` characters (UTF-16 code units), named as the bound `bound`. */
  length(field: string, value: string, max: number, bound = "the limit"): this {
    if (value.length > max) this.fail(field, `is ${value.length} characters long; ${bound} is ${max}`);
    return this;
  }

  /** Throws INVALID_ARGUMENT with ErrorInfo and BadRequest when anything failed. */
  check(): void {
    if (this.dropped > 0) this.violations.push({ field: "(more)", description: `${this.dropped} further violation(s) not listed` });
    if (this.violations.length > 0) throw invalidArgument(this.violations);
  }
}

/** What page_size 0 means in every List RPC. */
export const DEFAULT_PAGE_SIZE = 50;

const BAD_PAGE_TOKEN = { field: "page_token", description: "is not a token this server issued" };

/**
 * page_size and page_token of the List RPCs. `decode` reads the token's cursor; a token that is
 * not base64url or does not decode is one violation. Returns the cursor, undefined when unset.
 */
export function checkPage<T>(v: RequestValidator, pageSize: number, pageToken: string, decode?: (token: string) => T | undefined): T | undefined {
  v.number("page_size", pageSize, { min: 0, max: 1000, integer: true });
  if (pageToken === "") return undefined;
  const wellFormed = /^[A-Za-z0-9_-]{1,512}$/.test(pageToken);
  const cursor = wellFormed ? decode?.(pageToken) : undefined;
  if (!wellFormed || (decode && cursor === undefined)) v.fail(BAD_PAGE_TOKEN.field, BAD_PAGE_TOKEN.description);
  return cursor;
}

/**
 * A page of a List RPC: `items` keyed so that descending key order is the list's order
 * (newest first), from after the item keyed `after`. A token names the last key shown (see
 * keyToken), so pages stay exact while items are added or removed.
 */
export function pageByKey<T>(items: { key: string; item: T }[], pageSize: number, after: string | undefined): { page: T[]; nextKey: string } {
  const sorted = items.filter((i) => after === undefined || i.key < after).sort((a, b) => (a.key < b.key ? 1 : a.key > b.key ? -1 : 0));
  const shown = sorted.slice(0, pageSize || DEFAULT_PAGE_SIZE);
  return { page: shown.map((i) => i.item), nextKey: sorted.length > shown.length ? shown.at(-1)!.key : "" };
}

/** The page token of a key: opaque to clients. */
export function keyToken(key: string): string {
  return Buffer.from(key).toString("base64url");
}

/** The key a page token names, if it has the form of the list's keys. */
export function tokenKey(token: string, form: RegExp): string | undefined {
  const key = Buffer.from(token, "base64url").toString("latin1");
  return form.test(key) ? key : undefined;
}

/** A time in ms as a fixed-width key prefix, so keys sort by it. */
export const timeKey = (ms: number): string => String(Math.max(0, Math.floor(ms))).padStart(15, "0");

/** The error of a page token found wrong past validation (by a job executor, which reads its own tokens). */
export function badPageToken(): ConnectError {
  return invalidArgument([BAD_PAGE_TOKEN]);
}

/** A streamed upload's message after the first that is not a chunk: a second metadata, or one with nothing set. */
export function notAChunk(content: string | undefined): ConnectError {
  return content === "metadata"
    ? invalidArgument([{ field: "metadata", description: "comes once, in the first message; every later message is a chunk" }])
    : invalidArgument([{ field: "content", description: "is not set: every message after the first is a chunk" }]);
}
