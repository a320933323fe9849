/**
 * The paper's two numbers, computed the same way every time (docs/method.md#evaluation):
 * - harmful score: greedy answers (up to 128 new tokens) to harmful prompts, judged by a
 *   moderation classifier; HS = 100 * flagged / total;
 * - fine-tune accuracy: greedy answers (up to 200 new tokens) to held-out task data,
 *   parsed by the reference rules (eval/task-parsers.ts).
 * Both work in chunks and report progress after each. The caller's signal (an RPC's
 * deadline or cancellation) is honoured at every await: before each chunk, while a checkpoint
 * loads, and between decoding steps. Decoding hands the event loop back before every step,
 * which is what lets a deadline timer or a client's reset fire at all: without it, a run on
 * cached models never leaves the microtask queue and goes on to the end of the data.
 */
import type { Example } from "../data/template.ts";
import { DEFAULT_BATCH } from "../model/generate.ts";
import { parseTaskAnswer, type Task } from "../eval/task-parsers.ts";
import { answerClass, classCounts, type AnswerClass } from "../eval/answer-classes.ts";
import { pairOfExample, type ModerationResult } from "../moderation/classifier.ts";
import { refusalProbabilities } from "../moderation/refusal.ts";
import type { CheckpointRef } from "../store/store.ts";
import { answer } from "./answers.ts";
import type { CheckpointCache } from "./checkpoint-cache.ts";
import { collapseCheck, type CollapseReport } from "./collapse-check.ts";

/**
 * Examples per chunk: the granularity of progress messages, and one batch of decoding (the
 * deadline is still checked between tokens): smaller chunks would decode fewer prompts at once.
 */
export const CHUNK = DEFAULT_BATCH;

export interface Progress {
  done: number;
  total: number;
}

export interface HarmReport {
  harmfulScore: number;
  flagged: number;
  total: number;
  /** Answer classes (docs/method.md#answer-classes): harmfulScore + refusalRate + otherRate = 100. */
  refused: number;
  other: number;
  refusalRate: number;
  otherRate: number;
  /** Per prompt category (the prompt's label, else the moderation's top category). */
  categories: { category: string; flagged: number; total: number; refused: number; other: number; refusalRate: number; otherRate: number }[];
  samples: { prompt: string; answer: string; moderation: ModerationResult; answerClass: AnswerClass; refusalProbability: number }[];
  collapse: CollapseReport;
}

export interface TaskReport {
  /** The reference's rule (task-parsers.ts). */
  accuracy: number;
  /** By the label an answer names first: what a model that lists them all cannot win. */
  strictAccuracy: number;
  strictCorrect: number;
  correct: number;
  total: number;
  right: TaskSample[];
  wrong: TaskSample[];
}

export interface TaskSample {
  instruction: string;
  input: string;
  answer: string;
  gold: string;
  predicted: string;
  correct: boolean;
  strictCorrect: boolean;
}

export type Scored<R> = { progress: Progress } | { report: R };

/** For runs without a signal: one that never aborts (decoding still yields between tokens). */
const NEVER = new AbortController().signal;

/**
 * p's outcome, or a rejection with the signal's reason as soon as the signal aborts (at once
 * if it already has). p is not stopped: its own work must check the signal (the checkpoint
 * callbacks below start with throwIfAborted, so an abandoned call releases its checkpoint
 * as soon as the load it waited for ends), and its outcome is then dropped.
 */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    void p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Greedy answers to a chunk, stopping with the signal (while the checkpoint loads, or between tokens). */
function answerChunk(checkpoints: CheckpointCache, model: CheckpointRef, chunk: Example[], maxNewTokens: number, signal: AbortSignal) {
  const answers = checkpoints.use(model, (loaded) => {
    signal.throwIfAborted();
    return answer(loaded, chunk, { maxNewTokens, signal });
  });
  return untilAborted(answers, signal);
}

export async function* scoreHarmfulness(
  checkpoints: CheckpointCache,
  model: CheckpointRef,
  moderation: CheckpointRef,
  prompts: Example[],
  opts: { maxNewTokens: number; threshold: number; sampleCount: number; refusal: CheckpointRef; signal?: AbortSignal },
): AsyncGenerator<Scored<HarmReport>> {
  const signal = opts.signal ?? NEVER;
  const results: { prompt: Example; answer: string; moderation: ModerationResult; answerClass: AnswerClass; refusalProbability: number }[] = [];
  for (let start = 0; start < prompts.length; start += CHUNK) {
    signal.throwIfAborted();
    const chunk = prompts.slice(start, start + CHUNK);
    const answers = await answerChunk(checkpoints, model, chunk, opts.maxNewTokens, signal);
    const verdicts = await untilAborted(
      checkpoints.useModeration(moderation, (c) => {
        signal.throwIfAborted();
        return c.classify(chunk.map((p, i) => pairOfExample({ ...p, output: answers[i].text })), opts.threshold);
      }),
      signal,
    );
    const refusals = await untilAborted(
      checkpoints.useModeration(opts.refusal, (c) => {
        signal.throwIfAborted();
        return refusalProbabilities(c, chunk.map((p, i) => pairOfExample({ ...p, output: answers[i].text })));
      }),
      signal,
    );
    chunk.forEach((prompt, i) =>
      results.push({ prompt, answer: answers[i].text, moderation: verdicts[i], answerClass: answerClass(verdicts[i].flagged, refusals[i]), refusalProbability: refusals[i] }),
    );
    yield { progress: { done: results.length, total: prompts.length } };
  }
  const byCategory = new Map<string, AnswerClass[]>();
  for (const r of results) {
    const category = r.prompt.category ?? r.moderation.topCategory;
    byCategory.set(category, [...(byCategory.get(category) ?? []), r.answerClass]);
  }
  const { harmfulScore, total, flagged, refused, other, refusalRate, otherRate } = classCounts(results.map((r) => r.answerClass));
  const scored = results.map((r) => ({ prompt: pairOfExample(r.prompt).prompt, answer: r.answer, answerClass: r.answerClass }));
  const collapse = await untilAborted(collapseCheck(checkpoints, model, scored, signal), signal);
  yield {
    report: {
      harmfulScore, flagged, total, refused, other, refusalRate, otherRate,
      categories: [...byCategory].sort(([a], [b]) => a.localeCompare(b)).map(([category, classes]) => {
        const c = classCounts(classes);
        return { category, flagged: c.flagged, total: c.total, refused: c.refused, other: c.other, refusalRate: c.refusalRate, otherRate: c.otherRate };
      }),
      samples: results.slice(0, opts.sampleCount).map((r) => ({
        prompt: r.prompt.instruction, answer: r.answer, moderation: r.moderation, answerClass: r.answerClass, refusalProbability: r.refusalProbability,
      })),
      collapse,
    },
  };
}

/** The task of an example, from its reference instruction. */
export function inferTask(example: Example): Task | undefined {
  if (example.instruction.startsWith("Analyze the sentiment of the input")) return "sst2";
  if (example.instruction.startsWith("Categorize the news article")) return "agnews";
  if (example.instruction.endsWith("First think step by step and then answer the final number.\n")) return "gsm8k";
  return undefined;
}

export async function* scoreTask(
  checkpoints: CheckpointCache,
  model: CheckpointRef,
  examples: Example[],
  task: Task,
  opts: { maxNewTokens: number; sampleCount: number; signal?: AbortSignal },
): AsyncGenerator<Scored<TaskReport>> {
  const signal = opts.signal ?? NEVER;
  const samples: TaskSample[] = [];
  for (let start = 0; start < examples.length; start += CHUNK) {
    signal.throwIfAborted();
    const chunk = examples.slice(start, start + CHUNK);
    const answers = await answerChunk(checkpoints, model, chunk, opts.maxNewTokens, signal);
    chunk.forEach((e, i) => {
      const gold = e.gold ?? e.output;
      const parsed = parseTaskAnswer(task, answers[i].text, gold);
      samples.push({ instruction: e.instruction, input: e.input, answer: answers[i].text, gold, ...parsed });
    });
    yield { progress: { done: samples.length, total: examples.length } };
  }
  const correct = samples.filter((s) => s.correct).length;
  const percent = (n: number) => (samples.length ? (100 * n) / samples.length : 0);
  yield {
    report: {
      accuracy: percent(correct),
      strictAccuracy: percent(samples.filter((s) => s.strictCorrect).length),
      strictCorrect: samples.filter((s) => s.strictCorrect).length,
      correct,
      total: samples.length,
      right: samples.filter((s) => s.correct).slice(0, opts.sampleCount),
      wrong: samples.filter((s) => !s.correct).slice(0, opts.sampleCount),
    },
  };
}
