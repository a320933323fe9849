/**
 * Flags. Each is defined once: name, value placeholder, help and parser. cli.ts builds the
 * commander option of every command that lists it from that definition, and the command reads
 * the parsed value back through the same object. Parsers fail with a UsageError (exit 2) that
 * names the flag.
 */
import { Option, type Command as CommanderCommand } from "commander";
import { BUILTIN_CHECKPOINTS, builtinRef } from "../runtime/pipeline/builtins.ts";
import { UsageError } from "./errors.ts";
import type { Env, Ref } from "./output.ts";

export interface Flag<T> {
  /** Given as --name. */
  readonly name: string;
  /** Placeholder of the value in the help, e.g. "<n>"; a switch has none. */
  readonly value?: string;
  readonly help: string;
  /** The value of the text given; `previous` is the value so far (repeatable flags). A switch has no parser. */
  parse?(raw: string, previous: T | undefined, env: Env): T;
}

/** A switch: true when given. */
export function toggle(name: string, help: string): Flag<true> {
  return { name, help };
}

export function text(name: string, value: string, help: string): Flag<string> {
  return { name, value, help, parse: (raw) => raw };
}

/** Repeatable: every occurrence is kept, in order. */
export function texts(name: string, value: string, help: string): Flag<string[]> {
  return { name, value, help: `${help} (repeatable)`, parse: (raw, previous) => [...(previous ?? []), raw] };
}

const INT32 = 2 ** 31;

function integer(name: string, raw: string): number {
  const n = Number(raw);
  if (raw.trim() === "" || !Number.isInteger(n) || Math.abs(n) >= INT32) throw new UsageError(`--${name}: expected an integer, got "${raw}"`);
  return n;
}

/** An int32; range and sign are left to the server so its errors name the field. */
export function int(name: string, value: string, help: string): Flag<number> {
  return { name, value, help, parse: (raw) => integer(name, raw) };
}

/** A uint32 (seeds): negative values cannot even be encoded, so they are refused here. */
export function uint(name: string, value: string, help: string): Flag<number> {
  return {
    name,
    value,
    help,
    parse: (raw) => {
      const n = integer(name, raw);
      if (n < 0) throw new UsageError(`--${name}: expected a non-negative integer, got "${n}"`);
      return n;
    },
  };
}

export function float(name: string, value: string, help: string): Flag<number> {
  return {
    name,
    value,
    help,
    parse: (raw) => {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n)) throw new UsageError(`--${name}: expected a number, got "${raw}"`);
      return n;
    },
  };
}

/** A comma-separated list of integers, e.g. --layers 0,2. */
export function ints(name: string, value: string, help: string): Flag<number[]> {
  return {
    name,
    value,
    help,
    parse: (raw) =>
      raw.split(",").map((part) => {
        const n = Number(part);
        if (part.trim() === "" || !Number.isInteger(n)) throw new UsageError(`--${name}: expected comma-separated integers, got "${raw}"`);
        return n;
      }),
  };
}

/** One of the table's keys, mapped to its value. */
export function choice<T>(name: string, value: string, help: string, table: Record<string, T>): Flag<T> {
  return {
    name,
    value,
    help,
    parse: (raw) => {
      if (!Object.hasOwn(table, raw)) throw new UsageError(`--${name}: expected one of ${Object.keys(table).join(", ")}, got "${raw}"`);
      return table[raw];
    },
  };
}

/**
 * A checkpoint "uri@digest". "builtin:<name>" names a shipped checkpoint: its ref is computed
 * from the files in models/ (content addressing makes it the server's too), or read from
 * VACCINE_BUILTIN_<NAME> when set (a server built from other files).
 */
export function ref(name: string, value: string, help: string): Flag<Ref> {
  return { name, value, help, parse: (raw, _, env) => parseRef(`--${name}`, raw, env) };
}

/** A checkpoint given as `uri@digest` or `builtin:<name>`; `label` names where it came from in errors. */
export function parseRef(label: string, raw: string, env: Env): Ref {
  let text = raw;
  if (raw.startsWith("builtin:")) {
    const shipped = raw.slice("builtin:".length);
    const variable = `VACCINE_BUILTIN_${shipped.toUpperCase()}`;
    const computed = Object.hasOwn(BUILTIN_CHECKPOINTS, shipped) ? builtinRef(shipped as keyof typeof BUILTIN_CHECKPOINTS) : undefined;
    text = env[variable] ?? (computed ? `${computed.uri}@${computed.digest}` : "");
    if (!text) {
      throw new UsageError(
        `${label} ${raw}: no shipped checkpoint "${shipped}" here; set ${variable} to its "uri@digest" (the server logs it as "builtin checkpoint" at start)`,
      );
    }
  }
  const at = text.lastIndexOf("@");
  if (at <= 0 || at === text.length - 1) throw new UsageError(`${label}: expected "uri@digest" (e.g. store://checkpoints/<hex>@sha256:<hex>), got "${text}"`);
  return { uri: text.slice(0, at), digest: text.slice(at + 1) };
}

/** The commander option of a flag; `env` is what its parser reads (builtin: refs). */
export function optionOf(flag: Flag<unknown>, env: Env): Option {
  const option = new Option(flag.value ? `--${flag.name} ${flag.value}` : `--${flag.name}`, flag.help);
  const parse = flag.parse;
  return parse ? option.argParser((raw: string, previous: unknown) => parse(raw, previous, env)) : option;
}

/** The flags one command was given, read back through their definitions. */
export class FlagValues {
  constructor(
    private readonly command: CommanderCommand,
    private readonly options: ReadonlyMap<Flag<unknown>, Option>,
  ) {}

  /** The parsed value; undefined when the flag was not given. */
  get<T>(flag: Flag<T>): T | undefined {
    const option = this.options.get(flag);
    // Reading a flag the command does not list is a bug in the command, not a usage error.
    if (!option) throw new Error(`--${flag.name} is not a flag of "${this.command.name()}"`);
    return this.command.getOptionValue(option.attributeName()) as T | undefined;
  }

  has(flag: Flag<unknown>): boolean {
    return this.get(flag) !== undefined;
  }

  required<T>(flag: Flag<T>): T {
    const value = this.get(flag);
    if (value === undefined || value === "") throw new UsageError(`--${flag.name} is required`);
    return value;
  }

  /** Flags given together that make no sense together. */
  exclusive(...flags: Flag<unknown>[]): void {
    const given = flags.filter((f) => this.has(f));
    if (given.length > 1) throw new UsageError(`${given.map((f) => `--${f.name}`).join(" and ")} cannot be used together`);
  }
}
