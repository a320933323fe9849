/**
 * completion: a shell completion script generated from the commander tree (commander has none
 * built in), so it lists exactly the commands and flags the CLI parses.
 */
import type { Command as CommanderCommand } from "commander";
import type { Command } from "../command.ts";

const SHELLS = ["bash", "zsh"];

interface Node {
  /** "vaccine jobs list" */
  path: string;
  /** What may follow: subcommands, choices of the positional argument, flags. */
  words: string[];
  /** Flags followed by a value, which is not completed from the word list. */
  valued: string[];
}

function nodes(cmd: CommanderCommand, parent = ""): Node[] {
  const path = parent ? `${parent} ${cmd.name()}` : cmd.name();
  // Help's own list, so the help flag is included.
  const options = cmd.createHelp().visibleOptions(cmd).filter((o) => o.long);
  const words = [...cmd.commands.map((c) => c.name()), ...cmd.registeredArguments.flatMap((a) => a.argChoices ?? []), ...options.map((o) => o.long!)];
  const valued = options.filter((o) => o.required || o.optional).map((o) => o.long!);
  return [{ path, words, valued }, ...cmd.commands.flatMap((c) => nodes(c, path))];
}

/** Every name comes from the command table (letters, digits and dashes), so single quotes are enough. */
const quote = (s: string) => `'${s}'`;

/** The bash script: find the command path among the words typed, then offer what may follow it. */
function bashCompletion(root: CommanderCommand): string {
  const all = nodes(root);
  const fn = `_${root.name()}_complete`;
  return [
    `# ${root.name()} completion for bash: eval "$(${root.name()} completion bash)"`,
    `${fn}() {`,
    `  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} path=${quote(root.name())} i`,
    `  for ((i = 1; i < COMP_CWORD; i++)); do`,
    `    case "$path \${COMP_WORDS[i]}" in`,
    `      ${all.slice(1).map((n) => quote(n.path)).join("|")}) path="$path \${COMP_WORDS[i]}" ;;`,
    `    esac`,
    `  done`,
    // After a flag that takes a value, offer nothing: complete -o default then completes file names.
    `  case "$path $prev" in`,
    ...all.flatMap((n) => (n.valued.length ? [`    ${n.valued.map((flag) => quote(`${n.path} ${flag}`)).join("|")}) return ;;`] : [])),
    `  esac`,
    `  local words`,
    `  case "$path" in`,
    ...all.map((n) => `    ${quote(n.path)}) words=${quote(n.words.join(" "))} ;;`),
    `  esac`,
    `  COMPREPLY=($(compgen -W "$words" -- "$cur"))`,
    `}`,
    `complete -o default -F ${fn} ${root.name()}`,
    "",
  ].join("\n");
}

const completion: Command = {
  summary: "Print a shell completion script, generated from the commands and flags.",
  synopsis: "bash|zsh",
  details: 'Add to ~/.bashrc: eval "$(vaccine completion bash)"; to ~/.zshrc: eval "$(vaccine completion zsh)".',
  local: true,
  flags: [],
  argument: { name: "<shell>", help: "bash or zsh.", choices: SHELLS },
  async run(ctx) {
    const script = bashCompletion(ctx.root);
    // zsh runs bash completion functions through its bashcompinit layer.
    ctx.stdout.write(ctx.args[0] === "zsh" ? `autoload -U +X bashcompinit && bashcompinit\n${script}` : script);
  },
};

export const COMPLETION_COMMANDS = { completion };
