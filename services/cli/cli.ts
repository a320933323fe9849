/**
 * The dispatcher: argv to a command of the table, and the exit code contract:
 * 0 success, 1 an RPC error (or a watched job that did not succeed), 2 a usage error.
 */
import { ConnectError } from "@connectrpc/connect";
import { describeOptions, parseFlags, UsageError } from "./args.ts";
import { createClients, resolveAddress, type Clients } from "./client.ts";
import { CLIENT_OPTIONS, commandHelp, groupHelp, optionsOf, shortUsage, type Command } from "./command.ts";
import { COMMANDS } from "./commands.ts";
import { describeError } from "./errors.ts";
import type { Io } from "./output.ts";

const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

function usage(): string {
  const names = Object.entries(COMMANDS).map(([name, entry]) => ["subcommands" in entry ? `${name} ${Object.keys(entry.subcommands).join("|")}` : name, entry.summary]);
  const width = Math.max(...names.map(([n]) => n.length));
  return [
    "Usage: vaccine <command> [options]",
    "",
    "Client and server of the vaccine suite (perturbation-aware alignment against harmful fine-tuning).",
    "",
    "Commands:",
    ...names.map(([n, s]) => `  ${n.padEnd(width)}  ${s}`),
    "",
    "Options of every client command:",
    describeOptions(CLIENT_OPTIONS),
    "",
    'Checkpoints are named "uri@digest" (store://checkpoints/<hex>@sha256:<hex>), as results print them;',
    '"builtin:<name>" reads the ref from $VACCINE_BUILTIN_<NAME> (the server logs it at start).',
    "Exit codes: 0 success, 1 RPC error or a watched job that did not succeed, 2 usage error.",
    'Run "vaccine <command> --help" for a command\'s options.',
    "",
  ].join("\n");
}

function usageError(io: Io, message: string, help: string): number {
  io.stderr.write(`error: ${message}\n\n${help}`);
  return EXIT.usage;
}

const isHelp = (arg: string | undefined) => arg === "--help" || arg === "-h" || arg === "help";

export async function runCli(argv: string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) return usageError(io, "a command is required", usage());
  if (isHelp(name)) {
    io.stdout.write(usage());
    return EXIT.ok;
  }
  const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!entry) return usageError(io, `unknown command "${name}"`, usage());

  let command: Command = entry as Command;
  let path = name;
  let args = rest;
  if ("subcommands" in entry) {
    const [sub, ...subArgs] = rest;
    if (isHelp(sub)) {
      io.stdout.write(groupHelp(name, entry));
      return EXIT.ok;
    }
    if (sub === undefined || !Object.hasOwn(entry.subcommands, sub)) {
      return usageError(io, sub === undefined ? `${name} needs a command` : `unknown command "${name} ${sub}"`, groupHelp(name, entry));
    }
    command = entry.subcommands[sub];
    path = `${name} ${sub}`;
    args = subArgs;
  }

  try {
    const flags = parseFlags(optionsOf(command), args, io.env);
    if (flags.bool("help")) {
      io.stdout.write(commandHelp(path, command));
      return EXIT.ok;
    }
    let clients: Clients | undefined;
    const ctx = { ...io, flags, json: flags.bool("json"), clients: () => (clients ??= createClients(resolveAddress(flags.str("address"), io.env))) };
    return (await command.run(ctx)) ?? EXIT.ok;
  } catch (err) {
    if (err instanceof UsageError) return usageError(io, err.message, shortUsage(path, command));
    if (err instanceof ConnectError) {
      io.stderr.write(describeError(err));
      return EXIT.failed;
    }
    throw err;
  }
}
