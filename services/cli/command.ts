/** What a command is to the dispatcher: its flags, its help, and what it runs. */
import type { Flags, OptionTable } from "./args.ts";
import { describeOptions } from "./args.ts";
import type { Clients } from "./client.ts";
import type { Io } from "./output.ts";

export interface Context extends Io {
  flags: Flags;
  /** --json: proto JSON lines on stdout instead of text. */
  json: boolean;
  /** The clients for --address, created on first use. */
  clients(): Clients;
}

export interface Command {
  summary: string;
  /** What follows "vaccine <command>" in the usage line. */
  synopsis: string;
  /** Further help after the summary, if any. */
  details?: string;
  options: OptionTable;
  /** Runs in this process without calling a server (serve): no --address or --json. */
  local?: boolean;
  /** Resolves to the exit code; 0 when nothing is returned. */
  run(ctx: Context): Promise<number | void>;
}

/** A command with subcommands (jobs list, score harm). */
export interface CommandGroup {
  summary: string;
  subcommands: Record<string, Command>;
}

export const HELP_OPTION: OptionTable = { help: { type: "boolean", help: "Show this help." } };

export const CLIENT_OPTIONS: OptionTable = {
  address: { type: "string", value: "<url>", help: "Server address (default $VACCINE_ADDRESS or http://127.0.0.1:50051)." },
  json: { type: "boolean", help: "Print proto JSON, one object a line (streams: one per message)." },
};

/** Every flag a command accepts: its own, the client flags, --help. */
export function optionsOf(command: Command): OptionTable {
  return { ...command.options, ...(command.local ? {} : CLIENT_OPTIONS), ...HELP_OPTION };
}

/** The usage line and where the rest is: what a usage error prints. */
export function shortUsage(path: string, command: Command): string {
  return `Usage: vaccine ${path} ${command.synopsis}\nRun "vaccine ${path} --help" for its options.\n`;
}

export function commandHelp(path: string, command: Command): string {
  const details = command.details ? `\n${command.details}\n` : "";
  return `Usage: vaccine ${path} ${command.synopsis}\n\n${command.summary}\n${details}\nOptions:\n${describeOptions(optionsOf(command))}\n`;
}

export function groupHelp(name: string, group: CommandGroup): string {
  const width = Math.max(...Object.keys(group.subcommands).map((s) => s.length));
  const lines = Object.entries(group.subcommands).map(([sub, c]) => `  ${sub.padEnd(width)}  ${c.summary}`);
  return `Usage: vaccine ${name} <command> [options]\n\n${group.summary}\n\nCommands:\n${lines.join("\n")}\n\nRun "vaccine ${name} <command> --help" for its options.\n`;
}
