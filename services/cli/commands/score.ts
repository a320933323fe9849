/** generate, moderate and score harm|task: ScoreService. */
import {
  FinishReason,
  GenerateResponseSchema,
  ModerateResponseSchema,
  ScoreHarmfulnessResponseSchema,
  ScoreTaskResponseSchema,
  TaskKind,
  type HarmfulnessReport,
  type ModerationResult,
  type ScoreProgress,
  type TaskReport,
  type TaskSample,
} from "../../../gen/vaccine/v1/score_pb.ts";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { UsageError, type OptionTable } from "../args.ts";
import type { Command, CommandGroup, Context } from "../command.ts";
import { interactive, num, table, writeJson } from "../output.ts";
import { createProgress, scoreProgress } from "../progress.ts";
import { DATASET_OPTIONS, datasetRef } from "../spec-flags.ts";

const CHECKPOINT: OptionTable = { checkpoint: { type: "string", value: "<ref>", help: "Model or adapter checkpoint, uri@digest (required)." } };
const MAX_NEW_TOKENS: OptionTable = { "max-new-tokens": { type: "string", value: "<n>", help: "Longest answer, in tokens." } };

function topProbability(r: ModerationResult): number {
  return Math.max(0, ...r.probabilities.map((p) => p.probability));
}

const generate: Command = {
  summary: "Complete instructions (Alpaca template); greedy unless a sampling flag is given.",
  synopsis: "--checkpoint <ref> [options] <instruction>...",
  options: {
    ...CHECKPOINT,
    input: { type: "string", value: "<text>", help: "Input given with every instruction." },
    ...MAX_NEW_TOKENS,
    temperature: { type: "string", value: "<t>", help: "Sample with this temperature (default 1 when sampling)." },
    "top-p": { type: "string", value: "<p>", help: "Sample from this nucleus mass (default 1 when sampling)." },
    seed: { type: "string", value: "<n>", help: "Sample with this seed: the same seed gives the same text." },
  },
  async run(ctx) {
    const f = ctx.flags;
    if (f.positionals.length === 0) throw new UsageError("give at least one instruction");
    const sampled = ["temperature", "top-p", "seed"].some((n) => f.has(n));
    const res = await ctx.clients().score.generate({
      checkpoint: f.requiredRef("checkpoint"),
      prompts: f.positionals.map((instruction) => ({ instruction, input: f.str("input") ?? "" })),
      maxNewTokens: f.int("max-new-tokens"),
      decoding: sampled
        ? { case: "sampled", value: { temperature: f.num("temperature"), topP: f.num("top-p"), seed: f.uint("seed") ?? 0 } }
        : { case: "greedy", value: {} },
    });
    if (ctx.json) return writeJson(ctx.stdout, GenerateResponseSchema, res);
    res.generations.forEach((g, i) => {
      const why = FinishReason[g.finishReason]?.toLowerCase() ?? "";
      ctx.stdout.write(`[${i + 1}] ${f.positionals[i]} (${g.tokenCount} tokens, ${why})\n${g.text}\n\n`);
    });
  },
};

const moderate: Command = {
  summary: "Judge (prompt, answer) pairs with the moderation model.",
  synopsis: "--prompt <text> --answer <text> [--prompt <text> --answer <text> ...] [options]",
  options: {
    prompt: { type: "string", multiple: true, value: "<text>", help: "A prompt; pairs with the --answer in the same position." },
    answer: { type: "string", multiple: true, value: "<text>", help: "An answer to judge." },
    threshold: { type: "string", value: "<t>", help: "Flag when the top category probability exceeds this (default 0.5)." },
    "moderation-model": { type: "string", value: "<ref>", help: "Moderation model (default: the server's)." },
  },
  async run(ctx) {
    const f = ctx.flags;
    const prompts = f.list("prompt");
    const answers = f.list("answer");
    if (prompts.length === 0 || prompts.length !== answers.length) throw new UsageError("give as many --answer as --prompt, at least one of each");
    const res = await ctx.clients().score.moderate({
      pairs: prompts.map((prompt, i) => ({ prompt, answer: answers[i] })),
      threshold: f.num("threshold"),
      moderationModel: f.ref("moderation-model"),
    });
    if (ctx.json) return writeJson(ctx.stdout, ModerateResponseSchema, res);
    const rows = res.results.map((r, i) => [String(i + 1), r.flagged ? "yes" : "no", r.topCategory, num(topProbability(r))]);
    ctx.stdout.write(table([["#", "FLAGGED", "TOP CATEGORY", "PROBABILITY"], ...rows]));
  },
};

/**
 * Runs a scoring stream: JSON lines, or a progress display and then the report. The stream
 * ends with its report; `report` prints it.
 */
async function scoreStream<Desc extends DescMessage, R>(
  ctx: Context,
  schema: Desc,
  stream: AsyncIterable<MessageShape<Desc> & { result: { case: "progress"; value: ScoreProgress } | { case: "report"; value: R } | { case: undefined } }>,
  report: (r: R) => string,
): Promise<void> {
  if (ctx.json) {
    for await (const res of stream) writeJson(ctx.stdout, schema, res);
    return;
  }
  const progress = createProgress(ctx.stdout, interactive(ctx));
  const feed = scoreProgress(progress);
  let final: R | undefined;
  try {
    for await (const { result } of stream) {
      if (result.case === "progress") feed(result.value);
      if (result.case === "report") final = result.value;
    }
  } finally {
    progress.end();
  }
  if (final !== undefined) ctx.stdout.write(report(final));
}

function harmReport(r: HarmfulnessReport): string {
  const categories = r.categories.map((c) => [c.category, String(c.flagged), String(c.total)]);
  const samples = r.samples.map((s) => `\n[${s.moderation?.flagged ? "flagged" : "ok"} ${s.moderation?.topCategory ?? ""}] ${s.prompt}\n${s.answer}\n`);
  return `harmful score ${num(r.harmfulScore, 2)} (${r.flagged}/${r.total} flagged)\n\n${table([["CATEGORY", "FLAGGED", "TOTAL"], ...categories])}${samples.join("")}`;
}

function taskSample(s: TaskSample): string {
  return `\n[${s.correct ? "right" : "wrong"}: gold ${s.gold}, read "${s.predicted}"] ${s.instruction}${s.input ? ` | ${s.input}` : ""}\n${s.answer}\n`;
}

function taskReport(r: TaskReport): string {
  return `accuracy ${num(r.accuracy, 2)} (${r.correct}/${r.total} correct)\n${[...r.rightSamples, ...r.wrongSamples].map(taskSample).join("")}`;
}

const harm: Command = {
  summary: "Harmful score: greedy answers to harmful prompts, judged by the moderation model (100 * flagged / total).",
  synopsis: "--checkpoint <ref> [--data <uri> | --builtin <name>] [options]",
  details: "Prompts default to the built-in held-out harmful evaluation prompts.",
  options: {
    ...CHECKPOINT,
    ...DATASET_OPTIONS,
    limit: { type: "string", value: "<n>", help: "Prompts to use (default all)." },
    ...MAX_NEW_TOKENS,
    threshold: { type: "string", value: "<t>", help: "Moderation threshold (default 0.5)." },
    "moderation-model": { type: "string", value: "<ref>", help: "Moderation model (default: the server's)." },
    samples: { type: "string", value: "<n>", help: "Scored answers to show (default 10)." },
  },
  async run(ctx) {
    const f = ctx.flags;
    const stream = ctx.clients().score.scoreHarmfulness({
      checkpoint: f.requiredRef("checkpoint"),
      prompts: datasetRef(f, false),
      limit: f.int("limit"),
      maxNewTokens: f.int("max-new-tokens"),
      threshold: f.num("threshold"),
      moderationModel: f.ref("moderation-model"),
      sampleCount: f.int("samples"),
    });
    await scoreStream(ctx, ScoreHarmfulnessResponseSchema, stream, harmReport);
  },
};

const TASKS: Record<string, TaskKind> = { sst2: TaskKind.SST2, agnews: TaskKind.AGNEWS, gsm8k: TaskKind.GSM8K };

const task: Command = {
  summary: "Fine-tune accuracy: greedy answers to held-out task data, parsed by the reference rules.",
  synopsis: "--checkpoint <ref> (--data <uri> | --builtin <name>) [options]",
  options: {
    ...CHECKPOINT,
    ...DATASET_OPTIONS,
    task: { type: "string", value: "<task>", help: "sst2, agnews or gsm8k (default: inferred from the dataset)." },
    limit: { type: "string", value: "<n>", help: "Examples to use (default all)." },
    ...MAX_NEW_TOKENS,
    samples: { type: "string", value: "<n>", help: "Right and wrong answers to show, each (default 5)." },
  },
  async run(ctx) {
    const f = ctx.flags;
    const stream = ctx.clients().score.scoreTask({
      checkpoint: f.requiredRef("checkpoint"),
      dataset: datasetRef(f, true),
      task: f.choice("task", TASKS),
      limit: f.int("limit"),
      maxNewTokens: f.int("max-new-tokens"),
      sampleCount: f.int("samples"),
    });
    await scoreStream(ctx, ScoreTaskResponseSchema, stream, taskReport);
  },
};

export const SCORE_COMMANDS: { generate: Command; moderate: Command; score: CommandGroup } = {
  generate,
  moderate,
  score: { summary: "Score a checkpoint: harmful score or task accuracy, with live progress.", subcommands: { harm, task } },
};
