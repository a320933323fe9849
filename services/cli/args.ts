/**
 * Flags: one table per command drives both node:util parseArgs and the help text, and typed
 * accessors turn raw strings into request fields, failing with a UsageError (exit 2) that
 * names the flag.
 */
import { parseArgs } from "node:util";
import { BUILTIN_CHECKPOINTS, builtinRef } from "../runtime/pipeline/builtins.ts";

/** A mistake in the command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

export interface OptionSpec {
  type: "string" | "boolean";
  /** Repeatable: every occurrence is kept. */
  multiple?: boolean;
  /** Placeholder shown in the help, e.g. "<n>". */
  value?: string;
  help: string;
}
export type OptionTable = Record<string, OptionSpec>;

export type Env = Record<string, string | undefined>;

/** Parses argv against the table (strict: unknown flags are usage errors). */
export function parseFlags(options: OptionTable, argv: string[], env: Env): Flags {
  const config = Object.fromEntries(Object.entries(options).map(([name, o]) => [name, { type: o.type, multiple: o.multiple === true }]));
  try {
    const { values, positionals } = parseArgs({ args: argv, options: config, allowPositionals: true, strict: true });
    return new Flags(values as Record<string, string | boolean | string[] | undefined>, positionals, env);
  } catch (err) {
    const code = (err as { code?: string }).code ?? "";
    if (code.startsWith("ERR_PARSE_ARGS")) throw new UsageError((err as Error).message);
    throw err;
  }
}

/** The help lines of an option table, aligned. */
export function describeOptions(options: OptionTable): string {
  const rows = Object.entries(options).map(([name, o]) => [`--${name}${o.value ? ` ${o.value}` : ""}`, o.help + (o.multiple ? " (repeatable)" : "")]);
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`).join("\n");
}

/** A checkpoint as the API names it; mirrors CheckpointRef without tying args to the generated type. */
export interface Ref {
  uri: string;
  digest: string;
}

/** "uri@digest", the form every command prints refs in, so they paste back. */
export function formatRef(ref: Ref | undefined): string {
  return ref ? `${ref.uri}@${ref.digest}` : "";
}

const INT32 = 2 ** 31;

export class Flags {
  constructor(
    private readonly values: Record<string, string | boolean | string[] | undefined>,
    readonly positionals: string[],
    private readonly env: Env,
  ) {}

  has(name: string): boolean {
    return this.values[name] !== undefined;
  }

  bool(name: string): boolean {
    return this.values[name] === true;
  }

  str(name: string): string | undefined {
    return this.values[name] as string | undefined;
  }

  required(name: string): string {
    const value = this.str(name);
    if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
    return value;
  }

  list(name: string): string[] {
    return (this.values[name] as string[] | undefined) ?? [];
  }

  /** An int32; range and sign are left to the server so its errors name the field. */
  int(name: string): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (raw.trim() === "" || !Number.isInteger(n) || Math.abs(n) >= INT32) throw new UsageError(`--${name}: expected an integer, got "${raw}"`);
    return n;
  }

  /** A uint32 (seeds): negative values cannot even be encoded, so they are refused here. */
  uint(name: string): number | undefined {
    const n = this.int(name);
    if (n !== undefined && n < 0) throw new UsageError(`--${name}: expected a non-negative integer, got "${n}"`);
    return n;
  }

  num(name: string): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(n)) throw new UsageError(`--${name}: expected a number, got "${raw}"`);
    return n;
  }

  /** A comma-separated list of integers, e.g. --layers 0,2. */
  ints(name: string): number[] {
    const raw = this.str(name);
    if (raw === undefined) return [];
    return raw.split(",").map((part) => {
      const n = Number(part);
      if (part.trim() === "" || !Number.isInteger(n)) throw new UsageError(`--${name}: expected comma-separated integers, got "${raw}"`);
      return n;
    });
  }

  /** One of the table's keys, mapped to its value. */
  choice<T>(name: string, table: Record<string, T>): T | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    if (!Object.hasOwn(table, raw)) throw new UsageError(`--${name}: expected one of ${Object.keys(table).join(", ")}, got "${raw}"`);
    return table[raw];
  }

  /**
   * A checkpoint "uri@digest". "builtin:<name>" names a shipped checkpoint: its ref is
   * computed from the files in models/ (content addressing makes it the server's too), or
   * read from VACCINE_BUILTIN_<NAME> when set (a server built from other files).
   */
  ref(name: string): Ref | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    let text = raw;
    if (raw.startsWith("builtin:")) {
      const variable = `VACCINE_BUILTIN_${raw.slice("builtin:".length).toUpperCase()}`;
      const shipped = raw.slice("builtin:".length);
      const computed = Object.hasOwn(BUILTIN_CHECKPOINTS, shipped) ? builtinRef(shipped as keyof typeof BUILTIN_CHECKPOINTS) : undefined;
      text = this.env[variable] ?? (computed ? `${computed.uri}@${computed.digest}` : "");
      if (!text) {
        throw new UsageError(
          `--${name} ${raw}: no shipped checkpoint "${shipped}" here; set ${variable} to its "uri@digest" (the server logs it as "builtin checkpoint" at start)`,
        );
      }
    }
    const at = text.lastIndexOf("@");
    if (at <= 0 || at === text.length - 1) throw new UsageError(`--${name}: expected "uri@digest" (e.g. store://checkpoints/<hex>@sha256:<hex>), got "${text}"`);
    return { uri: text.slice(0, at), digest: text.slice(at + 1) };
  }

  requiredRef(name: string): Ref {
    this.required(name);
    return this.ref(name)!;
  }

  /** Flags given together that make no sense together. */
  exclusive(...names: string[]): void {
    const given = names.filter((n) => this.has(n));
    if (given.length > 1) throw new UsageError(`${given.map((n) => `--${n}`).join(" and ")} cannot be used together`);
  }
}
