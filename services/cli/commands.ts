/**
 * The command table: every `vaccine <command>` is one entry, in help order. A new command
 * (e.g. `experiment`) is one more entry here, a Command or a CommandGroup.
 */
import type { Command, CommandGroup } from "./command.ts";
import { CHECKPOINT_COMMANDS } from "./commands/checkpoints.ts";
import { COMPLETION_COMMANDS } from "./commands/completion.ts";
import { DATASET_COMMANDS } from "./commands/datasets.ts";
import { EMBED_COMMANDS } from "./commands/embed.ts";
import { EXPERIMENT_COMMANDS } from "./commands/experiment.ts";
import { JOB_COMMANDS } from "./commands/jobs.ts";
import { SCORE_COMMANDS } from "./commands/score.ts";
import { SERVER_COMMANDS } from "./commands/server.ts";

export const COMMANDS: Record<string, Command | CommandGroup> = {
  serve: SERVER_COMMANDS.serve,
  align: JOB_COMMANDS.align,
  finetune: JOB_COMMANDS.finetune,
  jobs: JOB_COMMANDS.jobs,
  embed: EMBED_COMMANDS.embed,
  drift: EMBED_COMMANDS.drift,
  generate: SCORE_COMMANDS.generate,
  moderate: SCORE_COMMANDS.moderate,
  score: SCORE_COMMANDS.score,
  datasets: DATASET_COMMANDS.datasets,
  checkpoints: CHECKPOINT_COMMANDS.checkpoints,
  health: SERVER_COMMANDS.health,
  experiment: EXPERIMENT_COMMANDS.experiment,
  completion: COMPLETION_COMMANDS.completion,
};
