// Help and shell completion without a server: both come from the commander tree, which must be
// the command table; every command's help lists each of its options and subcommands, and the
// bash completion script completes each of them.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import type { Command as CommanderCommand } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../../services/cli/cli.ts";
import { CLIENT_FLAGS } from "../../services/cli/command.ts";
import { COMMANDS } from "../../services/cli/commands.ts";
import { Capture, cli } from "./harness.ts";

const tree = buildProgram({ stdout: new Capture(), stderr: new Capture(), env: {} }).program;

/** Every command of the tree with its path below the root ([] for the root itself). */
function walk(cmd: CommanderCommand, path: string[] = []): { path: string[]; cmd: CommanderCommand }[] {
  return [{ path, cmd }, ...cmd.commands.flatMap((sub) => walk(sub, [...path, sub.name()]))];
}

const longFlags = (cmd: CommanderCommand) => cmd.options.map((o) => o.long);

describe("the command tree", () => {
  it("is the command table: each command, subcommand and flag, the client flags after a client command's own", () => {
    expect(tree.commands.map((c) => c.name())).toEqual(Object.keys(COMMANDS));
    for (const [name, entry] of Object.entries(COMMANDS)) {
      const node = tree.commands.find((c) => c.name() === name)!;
      const leaves = "subcommands" in entry ? Object.entries(entry.subcommands) : [[name, entry] as const];
      if ("subcommands" in entry) expect(node.commands.map((c) => c.name())).toEqual(Object.keys(entry.subcommands));
      for (const [leafName, command] of leaves) {
        const leaf = "subcommands" in entry ? node.commands.find((c) => c.name() === leafName)! : node;
        const flags = command.local ? command.flags : [...command.flags, ...CLIENT_FLAGS];
        expect(longFlags(leaf), `${name} ${leafName}`).toEqual(flags.map((f) => `--${f.name}`));
      }
    }
  });

  it("has a help for every command that lists each of its options and subcommands", async () => {
    const nodes = walk(tree);
    expect(nodes.length).toBeGreaterThan(Object.keys(COMMANDS).length);
    for (const { path, cmd } of nodes) {
      const help = await cli([...path, "--help"]);
      const what = ["vaccine", ...path].join(" ");
      expect(help.code, what).toBe(0);
      expect(help.stderr, what).toBe("");
      expect(help.stdout, what).toMatch(new RegExp(`^Usage: ${what} `));
      for (const option of cmd.options) expect(help.stdout, `${what}: ${option.flags}`).toContain(`  ${option.flags}  `);
      for (const sub of cmd.commands) expect(help.stdout, `${what}: ${sub.name()}`).toMatch(new RegExp(`^  ${sub.name()}\\b`, "m"));
    }
  });

  it("lists the client flags in the root help, and groups with their subcommands", async () => {
    const help = (await cli(["--help"])).stdout;
    for (const flag of CLIENT_FLAGS) expect(help).toMatch(new RegExp(`Options of every client command:[^]*  --${flag.name}\\b`));
    expect(help).toMatch(/^ {2}score harm\|task {2}/m);
    // "help" shows the same help.
    expect((await cli(["help"])).stdout).toBe(help);
    expect((await cli(["help", "jobs"])).stdout).toBe((await cli(["jobs", "--help"])).stdout);
  });

  it("prints the suite's version", async () => {
    const version = JSON.parse(readFileSync("package.json", "utf8")).version;
    expect(await cli(["--version"])).toMatchObject({ code: 0, stdout: `${version}\n` });
  });
});

/** What bash completes for each line (the last word is the one being typed), with the script loaded. */
function complete(script: string, lines: string[][]): string[] {
  const quote = (w: string) => `'${w}'`;
  const calls = lines.map((words) => `COMP_WORDS=(${words.map(quote).join(" ")}); COMP_CWORD=${words.length - 1}; COMPREPLY=(); _vaccine_complete; echo "\${COMPREPLY[*]}"`);
  const run = spawnSync("bash", ["--norc", "--noprofile", "-c", `${script}\n${calls.join("\n")}`], { encoding: "utf8" });
  expect(run.stderr).toBe("");
  return run.stdout.split("\n").slice(0, lines.length);
}

describe("vaccine completion", () => {
  it("completes every subcommand and flag of every command in bash", async () => {
    const script = await cli(["completion", "bash"]);
    expect(script.code).toBe(0);
    // Each word typed in full after its command's path, e.g. `vaccine jobs list --page-size`.
    const cases = walk(tree).flatMap(({ path, cmd }) => [...cmd.commands.map((c) => c.name()), ...longFlags(cmd), "--help"].map((word) => ["vaccine", ...path, word!]));
    const offered = complete(script.stdout, cases);
    cases.forEach((words, i) => expect(offered[i].split(" "), words.join(" ")).toContain(words.at(-1)));
  });

  it("offers what may follow the command typed so far, and nothing for a flag's value", async () => {
    const script = (await cli(["completion", "bash"])).stdout;
    const offered = complete(script, [
      ["vaccine", "jobs", "l"],
      ["vaccine", "align", "--base", "store://x@y", "--max-s"],
      ["vaccine", "jobs", "list", "--kind", ""],
      ["vaccine", "completion", ""],
    ]);
    expect(offered).toEqual(["list", "--max-steps --max-seq-len", "", "bash zsh --help"]);
  });

  it("prints the same function for zsh, loaded through bashcompinit", async () => {
    const bash = (await cli(["completion", "bash"])).stdout;
    const zsh = await cli(["completion", "zsh"]);
    expect(zsh.code).toBe(0);
    expect(zsh.stdout).toBe(`autoload -U +X bashcompinit && bashcompinit\n${bash}`);
  });
});
