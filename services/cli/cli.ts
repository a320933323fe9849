/**
 * The command table as a commander tree, and the exit code contract: 0 success, 1 an RPC error
 * (or a watched job that did not succeed), 2 a usage error, commander's own included.
 */
import { ConnectError } from "@connectrpc/connect";
import { Argument, Command as CommanderCommand, CommanderError } from "commander";
import { createClients, type Clients } from "../client/clients.ts";
import { ADDRESS, CLIENT_FLAGS, JSON_OUTPUT, type Command, type CommandGroup, type Context } from "./command.ts";
import { COMMANDS } from "./commands.ts";
import { connectionHint, resolveConnection, TLS_CA } from "./connection.ts";
import { describeError, UsageError } from "./errors.ts";
import pkg from "../../package.json" with { type: "json" };
import { FlagValues, optionOf } from "./flags.ts";
import type { Io } from "./output.ts";

const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

const NOTES = [
  'Checkpoints are named "uri@digest" (store://checkpoints/<hex>@sha256:<hex>), as results print them;',
  '"builtin:<name>" names a shipped checkpoint (base, moderation); $VACCINE_BUILTIN_<NAME> overrides its ref',
  "for a server built from other files (the server logs its refs at start).",
  "Exit codes: 0 success, 1 RPC error or a watched job that did not succeed, 2 usage error.",
  'Run "vaccine <command> --help" for a command\'s options.',
].join("\n");

/** What a run of the tree leaves behind. */
interface Outcome {
  /** The command whose arguments were parsed last: a usage error prints its usage. */
  command: CommanderCommand;
  code: number;
}

export async function runCli(argv: string[], io: Io): Promise<number> {
  const { program, outcome } = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: "user" });
    return outcome.code;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return EXIT.ok;
      // "help <unknown command>": commander has printed the help on stderr already.
      if (err.code === "commander.help") return EXIT.usage;
      return usageError(io, err.message, outcome.command);
    }
    if (err instanceof UsageError) return usageError(io, `error: ${err.message}`, outcome.command);
    throw err;
  }
}

/** The commander tree of the command table, writing to io; built afresh for each run, as commander keeps parsed values on it. */
export function buildProgram(io: Io): { program: CommanderCommand; outcome: Outcome } {
  const program = configure(new CommanderCommand("vaccine"), io)
    .usage("<command> [options]")
    .version(pkg.version, "--version", "Print the version of the suite.")
    .description("Client and server of the vaccine suite (perturbation-aware alignment against harmful fine-tuning).")
    .addHelpText("after", () => `\n${clientFlagsHelp(io)}\n\n${NOTES}`);
  const outcome: Outcome = { command: program, code: EXIT.ok };
  addSubcommands(program, COMMANDS, { io, root: program, outcome });
  return { program, outcome };
}

interface Build {
  io: Io;
  root: CommanderCommand;
  outcome: Outcome;
}

/** What every command of the tree shares: output to io, errors thrown rather than exiting, the help flag and layout. */
function configure(cmd: CommanderCommand, io: Io): CommanderCommand {
  return cmd
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // runCli prints usage errors itself, followed by the usage of the command.
      outputError: () => {},
      getOutHelpWidth: () => io.stdout.columns ?? 80,
      getErrHelpWidth: () => io.stderr.columns ?? 80,
    })
    .helpOption("-h, --help", "Show this help.")
    .configureHelp({ subcommandTerm });
}

// A group reads "jobs list|get|cancel|watch" in a list of commands.
function subcommandTerm(cmd: CommanderCommand): string {
  return cmd.commands.length ? `${cmd.name()} ${cmd.commands.map((c) => c.name()).join("|")}` : cmd.name();
}

/** The root help's list of the client flags, which every client command adds to its own. */
function clientFlagsHelp(io: Io): string {
  const options = CLIENT_FLAGS.map((flag) => optionOf(flag, io.env));
  const width = Math.max(...options.map((o) => o.flags.length));
  return ["Options of every client command:", ...options.map((o) => `  ${o.flags.padEnd(width)}  ${o.description}`)].join("\n");
}

/** "vaccine jobs list" as words. */
function commandPath(cmd: CommanderCommand): string[] {
  return cmd.parent ? [...commandPath(cmd.parent), cmd.name()] : [cmd.name()];
}

/** The subcommands under cmd; cmd itself only reports a missing or unknown one. */
function addSubcommands(cmd: CommanderCommand, entries: Record<string, Command | CommandGroup>, build: Build): CommanderCommand {
  cmd
    .argument("[command]")
    // Flags belong to the subcommands: anything else here is an unknown command.
    .allowUnknownOption()
    .allowExcessArguments()
    .helpCommand("help [command]", "Show help for a command.")
    .hook("preSubcommand", (_, sub) => {
      build.outcome.command = sub;
    })
    .action((name: string | undefined) => {
      const path = commandPath(cmd).slice(1);
      if (name !== undefined) throw new UsageError(`unknown command "${[...path, name].join(" ")}"`);
      throw new UsageError(path.length ? `${path.join(" ")} needs a command` : "a command is required");
    });
  for (const [name, entry] of Object.entries(entries)) {
    const sub = configure(new CommanderCommand(name), build.io).summary(entry.summary);
    if ("subcommands" in entry) cmd.addCommand(addSubcommands(sub.description(entry.summary).usage("<command> [options]"), entry.subcommands, build));
    else cmd.addCommand(leaf(sub, entry, build));
  }
  return cmd;
}

/** A command that runs: its flags as options (the client flags after its own), its argument, its action. */
function leaf(cmd: CommanderCommand, spec: Command, { io, root, outcome }: Build): CommanderCommand {
  cmd.description(spec.details ? `${spec.summary}\n\n${spec.details}` : spec.summary).usage(spec.synopsis);
  const flags = spec.local ? spec.flags : [...spec.flags, ...CLIENT_FLAGS];
  const options = new Map(flags.map((flag) => [flag, optionOf(flag, io.env)] as const));
  for (const option of options.values()) cmd.addOption(option);
  if (spec.argument) {
    const { name, help, choices } = spec.argument;
    const argument = new Argument(name, help);
    cmd.addArgument(choices ? argument.choices(choices) : argument);
  }
  return cmd.action(async () => {
    const values = new FlagValues(cmd, options);
    let clients: Clients | undefined;
    const ctx: Context = {
      ...io,
      flags: values,
      args: cmd.args,
      json: !spec.local && values.has(JSON_OUTPUT),
      clients: () => {
        if (!clients) {
          const { url, options } = resolveConnection(values.get(ADDRESS), values, io.env, io.stderr);
          clients = createClients(url, options);
        }
        return clients;
      },
      root,
    };
    try {
      outcome.code = (await spec.run(ctx)) ?? EXIT.ok;
    } catch (err) {
      if (!(err instanceof ConnectError)) throw err;
      // Commands that connect somewhere (not serve) say which connection option to check.
      io.stderr.write(describeError(err) + (options.has(TLS_CA) ? connectionHint(err, values) : ""));
      outcome.code = EXIT.failed;
    }
  });
}

/** A usage error: the message, then the usage of the command it concerns (a group's whole help). */
function usageError(io: Io, message: string, cmd: CommanderCommand): number {
  io.stderr.write(`${message}\n\n`);
  if (cmd.commands.length) cmd.outputHelp({ error: true });
  else io.stderr.write(`Usage: ${cmd.createHelp().commandUsage(cmd)}\nRun "${commandPath(cmd).join(" ")} --help" for its options.\n`);
  return EXIT.usage;
}
