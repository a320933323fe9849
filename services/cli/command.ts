/** What a command is to cli.ts: its flags, its help, and what it runs; and the flags of every client command. */
import type { Command as CommanderCommand } from "commander";
import type { Clients } from "../client/clients.ts";
import { CONNECTION_FLAGS } from "./connection.ts";
import { text, toggle, type Flag, type FlagValues } from "./flags.ts";
import type { Io } from "./output.ts";

export interface Context extends Io {
  flags: FlagValues;
  /** The positional arguments. */
  args: string[];
  /** --json: proto JSON lines on stdout instead of text. */
  json: boolean;
  /** The clients for --address and the TLS and token flags, created on first use. */
  clients(): Clients;
  /** The whole command tree, for what is generated from it (completion scripts). */
  root: CommanderCommand;
}

export interface Command {
  summary: string;
  /** What follows "vaccine <command>" in the usage line. */
  synopsis: string;
  /** Further help after the summary, if any. */
  details?: string;
  flags: Flag<unknown>[];
  /**
   * Its positional argument, in commander's notation ("[job-id]", "[text...]", "<shell>"). One
   * the command checks for itself, with its own message, is declared optional.
   */
  argument?: { name: string; help: string; choices?: string[] };
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

export const ADDRESS = text("address", "<url>", "Server address (default $VACCINE_ADDRESS or 127.0.0.1:50051); host:port is http://, or https:// with TLS flags.");
export const JSON_OUTPUT = toggle("json", "Print proto JSON, one object a line (streams: one per message).");
/** The flags every command that calls a server takes, after its own. */
export const CLIENT_FLAGS: Flag<unknown>[] = [ADDRESS, ...CONNECTION_FLAGS, JSON_OUTPUT];
