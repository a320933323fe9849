/** generate, moderate and score harm|task: ScoreService. */
import {
  AnswerClass,
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
import { DatasetSplit } from "../../../gen/vaccine/v1/common_pb.ts";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { Command, CommandGroup, Context } from "../command.ts";
import { UsageError } from "../errors.ts";
import { choice, float, int, ref, text, texts, uint } from "../flags.ts";
import { duration, interactive, num, table, writeJson } from "../output.ts";
import { createProgress, type Progress } from "../progress-bar.ts";
import { CHECKPOINT, DATASET_FLAGS, datasetRef, MAX_NEW_TOKENS, MODERATION_MODEL, THRESHOLD } from "../spec-flags.ts";

function topProbability(r: ModerationResult): number {
  return Math.max(0, ...r.probabilities.map((p) => p.probability));
}

const INPUT = text("input", "<text>", "Input given with every instruction.");
const TEMPERATURE = float("temperature", "<t>", "Sample with this temperature (default 1 when sampling).");
const TOP_P = float("top-p", "<p>", "Sample from this nucleus mass (default 1 when sampling).");
const SAMPLING_SEED = uint("seed", "<n>", "Sample with this seed: the same seed gives the same text.");

const generate: Command = {
  summary: "Complete instructions (Alpaca template); greedy unless a sampling flag is given.",
  synopsis: "--checkpoint <ref> [options] <instruction>...",
  flags: [CHECKPOINT, INPUT, MAX_NEW_TOKENS, TEMPERATURE, TOP_P, SAMPLING_SEED],
  argument: { name: "[instruction...]", help: "Instructions to complete (at least one)." },
  async run(ctx) {
    const f = ctx.flags;
    if (ctx.args.length === 0) throw new UsageError("give at least one instruction");
    const sampled = [TEMPERATURE, TOP_P, SAMPLING_SEED].some((flag) => f.has(flag));
    const res = await ctx.clients().score.generate({
      checkpoint: f.required(CHECKPOINT),
      prompts: ctx.args.map((instruction) => ({ instruction, input: f.get(INPUT) ?? "" })),
      maxNewTokens: f.get(MAX_NEW_TOKENS),
      decoding: sampled
        ? { case: "sampled", value: { temperature: f.get(TEMPERATURE), topP: f.get(TOP_P), seed: f.get(SAMPLING_SEED) ?? 0 } }
        : { case: "greedy", value: {} },
    });
    if (ctx.json) return writeJson(ctx.stdout, GenerateResponseSchema, res);
    res.generations.forEach((g, i) => {
      const why = FinishReason[g.finishReason]?.toLowerCase() ?? "";
      ctx.stdout.write(`[${i + 1}] ${ctx.args[i]} (${g.tokenCount} tokens, ${why})\n${g.text}\n\n`);
    });
  },
};

const PROMPT = texts("prompt", "<text>", "A prompt; pairs with the --answer in the same position.");
const ANSWER = texts("answer", "<text>", "An answer to judge.");

const moderate: Command = {
  summary: "Judge (prompt, answer) pairs with the moderation model.",
  synopsis: "--prompt <text> --answer <text> [--prompt <text> --answer <text> ...] [options]",
  flags: [PROMPT, ANSWER, THRESHOLD, MODERATION_MODEL],
  async run(ctx) {
    const f = ctx.flags;
    const prompts = f.get(PROMPT) ?? [];
    const answers = f.get(ANSWER) ?? [];
    if (prompts.length === 0 || prompts.length !== answers.length) throw new UsageError("give as many --answer as --prompt, at least one of each");
    const res = await ctx.clients().score.moderate({
      pairs: prompts.map((prompt, i) => ({ prompt, answer: answers[i] })),
      threshold: f.get(THRESHOLD),
      moderationModel: f.get(MODERATION_MODEL),
    });
    if (ctx.json) return writeJson(ctx.stdout, ModerateResponseSchema, res);
    const rows = res.results.map((r, i) => [String(i + 1), r.flagged ? "yes" : "no", r.topCategory, num(topProbability(r))]);
    ctx.stdout.write(table([["#", "FLAGGED", "TOP CATEGORY", "PROBABILITY"], ...rows]));
  },
};

/** Feeds a scoring stream's progress to a display, with an ETA from the wall clock. */
export function scoreProgress(progress: Progress, now: () => number = () => performance.now()): (p: ScoreProgress) => void {
  const start = now();
  return ({ done, total }) => {
    const elapsed = (now() - start) / 1000;
    const fields = done > 0 ? [`ETA ${duration((elapsed / done) * (total - done))}`] : [];
    progress.update({ label: "scored", done, total, fields });
  };
}

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

/** The collapse check in one line: the flag, why, and both measures. */
function collapseLine(r: HarmfulnessReport): string {
  const c = r.collapse;
  if (!c) return "";
  const verdict = c.degenerate ? `DEGENERATE (${c.reason})` : "not degenerate";
  return `collapse: ${verdict}; degenerate answers ${num(c.degenerateAnswerRate, 1)}% (repetitive ${num(c.repetitiveRate, 1)}%, duplicated ${num(c.duplicateRate, 1)}%), perplexity ${num(c.perplexityRatio, 2)}x the base model's\n`;
}

function harmReport(r: HarmfulnessReport): string {
  const categories = r.categories.map((c) => [c.category, String(c.flagged), String(c.refused), String(c.other), String(c.total)]);
  const samples = r.samples.map((s) => `\n[${AnswerClass[s.answerClass]?.toLowerCase() ?? ""}${s.moderation?.flagged ? ` ${s.moderation.topCategory}` : ""}] ${s.prompt}\n${s.answer}\n`);
  return (
    `harmful score ${num(r.harmfulScore, 2)} (${r.flagged}/${r.total} flagged)\n` +
    `refusal rate ${num(r.refusalRate, 2)} (${r.refused}/${r.total}), other rate ${num(r.otherRate, 2)} (${r.other}/${r.total})\n` +
    `${collapseLine(r)}\n${table([["CATEGORY", "FLAGGED", "REFUSED", "OTHER", "TOTAL"], ...categories])}${samples.join("")}`
  );
}

function taskSample(s: TaskSample): string {
  return `\n[${s.correct ? "right" : "wrong"}: gold ${s.gold}, read "${s.predicted}"${s.strictCorrect === s.correct ? "" : `, first label ${s.strictCorrect ? "right" : "wrong"}`}] ${s.instruction}${s.input ? ` | ${s.input}` : ""}\n${s.answer}\n`;
}

function taskReport(r: TaskReport): string {
  return `accuracy ${num(r.accuracy, 2)} (${r.correct}/${r.total} correct), strict ${num(r.strictAccuracy ?? r.accuracy, 2)} (${r.strictCorrect}/${r.total} by the first label named)\n${[...r.rightSamples, ...r.wrongSamples].map(taskSample).join("")}`;
}

const LIMIT = int("limit", "<n>", "Examples to use (default all).");
const HARM_SAMPLES = int("samples", "<n>", "Scored answers to show (default 10).");
const REFUSAL_MODEL = ref("refusal-model", "<ref>", "Refusal model that sorts unflagged answers into refusal and other (default: the server's).");

const harm: Command = {
  summary: "Harmful score: greedy answers to harmful prompts, judged by the moderation model (100 * flagged / total).",
  synopsis: "--checkpoint <ref> [--data <uri> | --builtin <name>] [options]",
  details:
    "Prompts default to the built-in held-out harmful evaluation prompts. Every answer is harmful (flagged), a refusal (refusal model) or other; " +
    "the three rates sum to 100. The collapse check marks degenerate models, which a low harmful score alone would crown (docs/method.md).",
  flags: [CHECKPOINT, ...DATASET_FLAGS, LIMIT, MAX_NEW_TOKENS, THRESHOLD, MODERATION_MODEL, REFUSAL_MODEL, HARM_SAMPLES],
  async run(ctx) {
    const f = ctx.flags;
    const stream = ctx.clients().score.scoreHarmfulness({
      checkpoint: f.required(CHECKPOINT),
      prompts: datasetRef(f, false),
      limit: f.get(LIMIT),
      maxNewTokens: f.get(MAX_NEW_TOKENS),
      threshold: f.get(THRESHOLD),
      moderationModel: f.get(MODERATION_MODEL),
      refusalModel: f.get(REFUSAL_MODEL),
      sampleCount: f.get(HARM_SAMPLES),
    });
    await scoreStream(ctx, ScoreHarmfulnessResponseSchema, stream, harmReport);
  },
};

const TASKS: Record<string, TaskKind> = { sst2: TaskKind.SST2, agnews: TaskKind.AGNEWS, gsm8k: TaskKind.GSM8K };

const TASK = choice("task", "<task>", "sst2, agnews or gsm8k (default: inferred from the dataset).", TASKS);
const TASK_SAMPLES = int("samples", "<n>", "Right and wrong answers to show, each (default 5).");

const task: Command = {
  summary: "Fine-tune accuracy: greedy answers to held-out task data, parsed by the reference rules.",
  synopsis: "--checkpoint <ref> (--data <uri> | --builtin <name>) [options]",
  flags: [CHECKPOINT, ...DATASET_FLAGS, TASK, LIMIT, MAX_NEW_TOKENS, TASK_SAMPLES],
  async run(ctx) {
    const f = ctx.flags;
    const stream = ctx.clients().score.scoreTask({
      checkpoint: f.required(CHECKPOINT),
      // Accuracy on what the model may have trained on would flatter it: held-out unless asked.
      dataset: datasetRef(f, true, DatasetSplit.TEST),
      task: f.get(TASK),
      limit: f.get(LIMIT),
      maxNewTokens: f.get(MAX_NEW_TOKENS),
      sampleCount: f.get(TASK_SAMPLES),
    });
    await scoreStream(ctx, ScoreTaskResponseSchema, stream, taskReport);
  },
};

export const SCORE_COMMANDS: { generate: Command; moderate: Command; score: CommandGroup } = {
  generate,
  moderate,
  score: { summary: "Score a checkpoint: harmful score or task accuracy, with live progress.", subcommands: { harm, task } },
};
