/**
 * The paper's comparison, driven through the services over gRPC: non-aligned, SFT-aligned
 * and Vaccine-aligned models, each fine-tuned on a task mix with harmful ratio p, then
 * scored (harmful score, fine-tune accuracy, harmful embedding drift against the model the
 * fine-tuning started from, along the run), plus a rho sweep. Cells run `parallel` at a time,
 * each once the cells it reads have finished (a training job trains in its own worker thread,
 * so two cells use both cores); every finished cell is saved at once, so a restarted run
 * skips it.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import type { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { DatasetSplit, type DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import type { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobState, type Job, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { formatPrompt } from "../runtime/data/template.ts";
import { loadBuiltin } from "../runtime/data/builtin.ts";
import { answerClassesOf, type AnswerClasses } from "./answer-classes.ts";
import { alignKey, rowKey, rowsOf, type AlignChoice, type Preset, type RowSpec } from "./presets.ts";
import { alignMethod, guardOf } from "./specs.ts";
import type { CurvePoint } from "./steps-to-break.ts";

export interface Clients {
  align: Client<typeof AlignService>;
  fineTune: Client<typeof FineTuneService>;
  embed: Client<typeof EmbedService>;
  score: Client<typeof ScoreService>;
}

export interface Ref {
  uri: string;
  digest: string;
}

export interface AlignResult {
  kind: "align";
  ref: Ref;
  seconds: number;
  stepSeconds: number;
  perturbationSeconds: number;
  firstLoss: number;
  finalLoss: number;
  harmfulScore: number;
  /** Refusal and other rates and the collapse check of the same answers (absent in runs recorded before them). */
  classes?: AnswerClasses;
}

/** The base model's scores: where a non-aligned fine-tuning's curve starts. */
export interface BaseResult {
  kind: "base";
  harmfulScore: number;
  classes: AnswerClasses;
}

export interface FineTuneResult {
  kind: "finetune";
  ref: Ref;
  seconds: number;
  harmfulScore: number;
  classes?: AnswerClasses;
  accuracy: number;
  /** Accuracy by the label each answer names first (TaskReport.strict_accuracy); absent in runs recorded before it, or from a server without it. */
  strictAccuracy?: number;
  /** Drift against the model fine-tuning started from, at each training state and at the end. */
  drift: { step: number; squared: number; l2: number }[];
  harmfulSamples: { prompt: string; answer: string }[];
  /**
   * Harmfulness at step 0 (the model fine-tuning starts from), at the scored training states
   * and at the end, in step order (presets with scoreEvery; absent in runs recorded before it).
   */
  curve?: CurvePoint[];
  /** Wall time of the fine-tuning job alone, without the scoring (absent in older runs). */
  trainSeconds?: number;
}

export interface NormResult {
  kind: "norm";
  /** Global norm of the attention outputs over all layers of one training batch. */
  attentionNorm: number;
  batchSize: number;
}

export type CellResult = AlignResult | BaseResult | FineTuneResult | NormResult;

export interface Results {
  preset: Preset;
  base: Ref;
  machine: { cpus: number; model: string; node: string };
  cells: Record<string, CellResult>;
}

export interface Cell {
  id: string;
  /** Cells whose results this one reads: it starts once they have finished. */
  after: string[];
  run: (results: Results) => Promise<CellResult>;
}

const builtin = (name: string, o: { size: number; seed: number; ratio?: number; split?: DatasetSplit }): DatasetRef =>
  ({ source: { case: "builtin", value: { name, size: o.size, seed: o.seed, harmfulRatio: o.ratio, split: o.split ?? DatasetSplit.TRAIN } } }) as DatasetRef;

export const alignId = (a: AlignChoice, seed: number) => `align/${alignKey(a)}/seed${seed}`;
export const fineTuneId = (row: RowSpec, p: number, seed: number) => `finetune/${rowKey(row)}/p${p}/seed${seed}`;
export const baseId = (seed: number) => `base/seed${seed}`;

/**
 * The rows of the rho sweeps (absolute, then relative), run at p = sweepRatio. The main rho
 * is not among them: its run at sweepRatio is the grid's when the ratios include it.
 */
export function sweepRows(preset: Preset): RowSpec[] {
  return [
    ...preset.sweep.map((rho): RowSpec => ({ label: `Vaccine (rho ${rho})`, align: { method: "vaccine", rho } })),
    ...(preset.relativeSweep ?? []).map((r): RowSpec => ({ label: `Vaccine (rho_relative ${r})`, align: { method: "vaccine", rhoRelative: r } })),
  ];
}

/** Every fine-tuning run of a preset (per seed): each row at each p, then the sweeps at sweepRatio, without repeats. */
export function plannedRuns(preset: Preset): { row: RowSpec; p: number }[] {
  const runs = new Map<string, { row: RowSpec; p: number }>();
  for (const p of preset.ratios) for (const row of rowsOf(preset)) runs.set(fineTuneId(row, p, 0), { row, p });
  for (const row of sweepRows(preset)) {
    const id = fineTuneId(row, preset.sweepRatio, 0);
    if (!runs.has(id)) runs.set(id, { row, p: preset.sweepRatio });
  }
  return [...runs.values()];
}

/** Follows a job to its end; returns the final job and every step event. */
async function follow(watch: AsyncIterable<{ event?: JobEvent }>, get: () => Promise<{ job?: Job }>, onStep?: (e: JobEvent) => void) {
  const steps: JobEvent[] = [];
  for await (const { event } of watch) {
    if (event?.event.case === "step") {
      steps.push(event);
      onStep?.(event);
    }
  }
  const job = (await get()).job!;
  if (job.state !== JobState.SUCCEEDED) throw new Error(`job ${job.id} ended ${JobState[job.state]}: ${job.error?.message ?? ""}`);
  return { job, steps };
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

export interface RunnerHooks {
  /** A cell starts or a job reports a step. */
  onProgress?: (line: { cell: string; index: number; total: number; step?: number; totalSteps?: number; loss?: number; perturbationNorm?: number }) => void;
}

const point = (step: number, s: { harmfulScore: number; classes?: AnswerClasses }): CurvePoint => ({
  step,
  harmfulScore: s.harmfulScore,
  ...(s.classes ? { refusalRate: s.classes.refusalRate, otherRate: s.classes.otherRate, degenerate: s.classes.degenerate } : {}),
});

/** The cells of a preset, in dependency order (alignments before the fine-tunings that use them). */
export function planCells(preset: Preset, clients: Clients, base: Ref, hooks: RunnerHooks = {}): Cell[] {
  const cells: Cell[] = [];
  const lora = { rank: preset.lora.rank, alpha: preset.lora.alpha, dropout: preset.lora.dropout };
  const runs = plannedRuns(preset);
  const alignments = new Map(runs.flatMap(({ row }) => (row.align ? [[alignKey(row.align), row.align] as const] : [])));
  const progress = (cell: string) => (e: JobEvent) => {
    if (e.event.case !== "step") return;
    const s = e.event.value;
    hooks.onProgress?.({ cell, index: -1, total: -1, step: s.step, totalSteps: s.totalSteps, loss: s.loss, perturbationNorm: s.perturbationNorm });
  };
  const harmfulScore = async (ref: Ref, seed: number) => {
    let hs = 0;
    let classes: AnswerClasses | undefined;
    const samples: { prompt: string; answer: string }[] = [];
    for await (const r of clients.score.scoreHarmfulness({
      checkpoint: ref,
      prompts: builtin("harmful-eval", { size: preset.eval.harmfulPrompts, seed, split: DatasetSplit.TEST }),
      maxNewTokens: preset.eval.maxNewTokens,
      // Every answer, for the world's own label (answerClassesOf); three are kept.
      sampleCount: preset.eval.harmfulPrompts,
    })) {
      if (r.result.case === "report") {
        hs = r.result.value.harmfulScore;
        classes = answerClassesOf(r.result.value);
        samples.push(...r.result.value.samples.slice(0, 3).map((s) => ({ prompt: s.prompt, answer: s.answer })));
      }
    }
    return { hs, samples, classes: classes! };
  };

  for (const seed of preset.seeds) {
    cells.push({
      id: `norm/seed${seed}`,
      after: [],
      run: async () => {
        const data = loadBuiltin("alignment", { size: preset.align.batchSize, seed });
        const texts = data.kind === "examples" ? data.examples.map((e) => formatPrompt(e) + e.output) : [];
        const res = await clients.embed.embed({ checkpoint: base, texts, pooling: Pooling.NONE });
        let sq = 0;
        for (const e of res.embeddings) for (const l of e.layers) for (const x of l.vectors!.values) sq += x * x;
        return { kind: "norm", attentionNorm: Math.sqrt(sq), batchSize: texts.length };
      },
    });
    // A non-aligned run's curve starts at the base model, scored once per seed.
    if (preset.scoreEvery && runs.some(({ row }) => !row.align)) {
      cells.push({
        id: baseId(seed),
        after: [],
        run: async () => {
          const { hs, classes } = await harmfulScore(base, seed);
          return { kind: "base", harmfulScore: hs, classes };
        },
      });
    }
    for (const a of alignments.values()) {
      const id = alignId(a, seed);
      cells.push({
        id,
        after: [],
        run: async () => {
          const started = Date.now();
          const { job } = await clients.align.createAlignJob({
            spec: {
              baseCheckpoint: base,
              dataset: builtin("alignment", { size: preset.align.size, seed }),
              method: alignMethod(a),
              lora,
              training: { maxSteps: preset.align.steps, learningRate: preset.align.learningRate, batchSize: preset.align.batchSize, seed, checkpointEvery: preset.align.steps },
            },
          });
          const done = await follow(clients.align.watchAlignJob({ jobId: job!.id }), () => clients.align.getAlignJob({ jobId: job!.id }), progress(id));
          const ref = { uri: done.job.result!.uri, digest: done.job.result!.digest };
          const losses = done.steps.map((e) => (e.event.case === "step" ? e.event.value : undefined)!);
          return {
            kind: "align",
            ref,
            seconds: (Date.now() - started) / 1000,
            stepSeconds: mean(losses.map((s) => s.stepSeconds)),
            perturbationSeconds: mean(losses.map((s) => s.perturbationSeconds)),
            firstLoss: losses[0]?.loss ?? 0,
            finalLoss: mean(losses.slice(-10).map((s) => s.loss)),
            ...(await harmfulScore(ref, seed).then(({ hs, classes }) => ({ harmfulScore: hs, classes }))),
          };
        },
      });
    }
    for (const { row, p } of runs) {
      const id = fineTuneId(row, p, seed);
      cells.push({
        id,
        after: row.align ? [alignId(row.align, seed)] : preset.scoreEvery ? [baseId(seed)] : [],
        run: async (results) => {
          const started = Date.now();
          const parentCell = row.align ? (results.cells[alignId(row.align, seed)] as AlignResult) : undefined;
          const parent = parentCell ? parentCell.ref : base;
          const ft = preset.finetune;
          const { job } = await clients.fineTune.createFineTuneJob({
            spec: {
              alignedCheckpoint: parent,
              dataset: builtin(`${ft.task}-mix`, { size: ft.size, seed, ratio: p }),
              lora,
              training: { maxSteps: ft.steps, learningRate: ft.learningRate, batchSize: ft.batchSize, seed, checkpointEvery: ft.checkpointEvery },
              ...(row.guard ? { guard: guardOf(row.guard) } : {}),
            },
          });
          const states: { step: number; ref: Ref }[] = [];
          let lastStep = 0;
          for await (const { event } of clients.fineTune.watchFineTuneJob({ jobId: job!.id })) {
            if (event?.event.case === "checkpointWritten") states.push({ step: event.event.value.step, ref: event.event.value.checkpoint! });
            if (event?.event.case === "step") lastStep = event.event.value.step;
            if (event) progress(id)(event);
          }
          const done = (await clients.fineTune.getFineTuneJob({ jobId: job!.id })).job!;
          if (done.state !== JobState.SUCCEEDED) throw new Error(`job ${done.id} ended ${JobState[done.state]}: ${done.error?.message ?? ""}`);
          const trainSeconds = (Date.now() - started) / 1000;
          const ref = { uri: done.result!.uri, digest: done.result!.digest };
          const drift = [];
          for (const s of states) {
            const d = await clients.embed.computeDrift({ reference: parent, candidate: s.ref, probeDataset: builtin("alignment", { size: preset.eval.probeSize, seed: 999 }) });
            drift.push({ step: s.step, squared: d.totalSquaredNorm, l2: d.totalL2Norm });
          }
          const { hs, samples, classes } = await harmfulScore(ref, seed);
          let curve: CurvePoint[] | undefined;
          if (preset.scoreEvery) {
            // Step 0 is the parent as its own cell scored it; the end is the result, so a
            // training state at the last step (the same adapter) is not scored again.
            const start = parentCell ?? (results.cells[baseId(seed)] as BaseResult);
            const end = Math.max(lastStep, ...states.map((s) => s.step)) || ft.steps;
            curve = [point(0, start)];
            for (const s of states.filter((s) => s.step % preset.scoreEvery! === 0 && s.step < end)) {
              const r = await harmfulScore(s.ref, seed);
              curve.push(point(s.step, { harmfulScore: r.hs, classes: r.classes }));
            }
            curve.push(point(end, { harmfulScore: hs, classes }));
          }
          let accuracy = 0;
          let strictAccuracy: number | undefined;
          for await (const r of clients.score.scoreTask({
            checkpoint: ref,
            dataset: builtin(ft.task, { size: preset.eval.taskExamples, seed, split: DatasetSplit.TEST }),
            maxNewTokens: preset.eval.maxNewTokens,
          })) {
            if (r.result.case === "report") ({ accuracy, strictAccuracy } = r.result.value);
          }
          return {
            kind: "finetune",
            ref,
            seconds: (Date.now() - started) / 1000,
            harmfulScore: hs,
            classes,
            accuracy,
            strictAccuracy,
            drift,
            harmfulSamples: samples,
            ...(curve ? { curve, trainSeconds } : {}),
          };
        },
      });
    }
  }
  return cells;
}

/**
 * Runs every cell not yet in out/results.json, `parallel` at a time in plan order as their
 * inputs finish, saving after each. On a failure the cells already running finish (and are
 * saved) before it is thrown.
 */
export async function runExperiment(preset: Preset, clients: Clients, base: Ref, out: string, hooks: RunnerHooks = {}, parallel = 1): Promise<Results> {
  mkdirSync(out, { recursive: true });
  const file = join(out, "results.json");
  const previous = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Results) : undefined;
  // Results of another preset or base model are not reused.
  const sameRun = previous && JSON.stringify(previous.preset) === JSON.stringify(preset) && previous.base.digest === base.digest;
  const results: Results = sameRun
    ? previous
    : { preset, base, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? "", node: process.version }, cells: {} };
  const cells = planCells(preset, clients, base, hooks);
  const index = new Map(cells.map((c, i) => [c.id, i + 1]));
  await runCells(cells, new Set(Object.keys(results.cells)), parallel, async (cell) => {
    hooks.onProgress?.({ cell: cell.id, index: index.get(cell.id)!, total: cells.length });
    results.cells[cell.id] = await cell.run(results);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify(results, null, 2) + "\n");
    renameSync(tmp, file);
  });
  return results;
}

/**
 * Runs the cells not in `done`, at most `parallel` at once, each the first in plan order whose
 * `after` cells are done; adds each finished cell to `done`. After a failure no cell starts;
 * the running ones finish, then the first failure is thrown.
 */
export async function runCells(cells: Cell[], done: Set<string>, parallel: number, run: (cell: Cell) => Promise<void>): Promise<void> {
  const pending = cells.filter((c) => !done.has(c.id));
  const running = new Set<Promise<void>>();
  let failed: { error: unknown } | undefined;
  while (!failed && (pending.length || running.size)) {
    const ready = running.size < parallel ? pending.findIndex((c) => c.after.every((id) => done.has(id))) : -1;
    if (ready >= 0) {
      const [cell] = pending.splice(ready, 1);
      const started: Promise<void> = run(cell)
        .then(() => void done.add(cell.id), (error: unknown) => void (failed ??= { error }))
        .finally(() => running.delete(started));
      running.add(started);
    } else if (running.size) {
      await Promise.race(running);
    } else {
      throw new Error(`cells wait for cells that are not planned: ${pending.map((c) => `${c.id} after ${c.after.filter((id) => !done.has(id)).join(", ")}`).join("; ")}`);
    }
  }
  await Promise.all(running);
  if (failed) throw failed.error;
}
