/**
 * The paper's comparison, driven through the services over gRPC: non-aligned, SFT-aligned
 * and Vaccine-aligned models, each fine-tuned on a task mix with harmful ratio p, then
 * scored (harmful score, fine-tune accuracy, harmful embedding drift against the model the
 * fine-tuning started from, along the run), plus a rho sweep. Every finished cell is saved
 * at once, so a restarted run skips it.
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
import type { Preset } from "./presets.ts";

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

export type Method = "none" | "sft" | "vaccine";

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

export interface FineTuneResult {
  kind: "finetune";
  ref: Ref;
  seconds: number;
  harmfulScore: number;
  classes?: AnswerClasses;
  accuracy: number;
  /** Drift against the model fine-tuning started from, at each training state and at the end. */
  drift: { step: number; squared: number; l2: number }[];
  harmfulSamples: { prompt: string; answer: string }[];
}

export interface NormResult {
  kind: "norm";
  /** Global norm of the attention outputs over all layers of one training batch. */
  attentionNorm: number;
  batchSize: number;
}

export type CellResult = AlignResult | FineTuneResult | NormResult;

export interface Results {
  preset: Preset;
  base: Ref;
  machine: { cpus: number; model: string; node: string };
  cells: Record<string, CellResult>;
}

export interface Cell {
  id: string;
  run: (results: Results) => Promise<CellResult>;
}

const builtin = (name: string, o: { size: number; seed: number; ratio?: number; split?: DatasetSplit }): DatasetRef =>
  ({ source: { case: "builtin", value: { name, size: o.size, seed: o.seed, harmfulRatio: o.ratio, split: o.split ?? DatasetSplit.TRAIN } } }) as DatasetRef;

export const alignId = (method: Method, rho: number, seed: number) => `align/${method}${method === "vaccine" ? `-rho${rho}` : ""}/seed${seed}`;
export const fineTuneId = (method: Method, rho: number, p: number, seed: number) =>
  `finetune/${method}${method === "vaccine" ? `-rho${rho}` : ""}/p${p}/seed${seed}`;

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

/** The cells of a preset, in dependency order (alignments before the fine-tunings that use them). */
export function planCells(preset: Preset, clients: Clients, base: Ref, hooks: RunnerHooks = {}): Cell[] {
  const cells: Cell[] = [];
  const lora = { rank: preset.lora.rank, alpha: preset.lora.alpha, dropout: preset.lora.dropout };
  const rhos = [...new Set([preset.rho, ...preset.sweep])];
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
      sampleCount: 3,
    })) {
      if (r.result.case === "report") {
        hs = r.result.value.harmfulScore;
        classes = answerClassesOf(r.result.value);
        samples.push(...r.result.value.samples.map((s) => ({ prompt: s.prompt, answer: s.answer })));
      }
    }
    return { hs, samples, classes: classes! };
  };

  for (const seed of preset.seeds) {
    cells.push({
      id: `norm/seed${seed}`,
      run: async () => {
        const data = loadBuiltin("alignment", { size: preset.align.batchSize, seed });
        const texts = data.kind === "examples" ? data.examples.map((e) => formatPrompt(e) + e.output) : [];
        const res = await clients.embed.embed({ checkpoint: base, texts, pooling: Pooling.NONE });
        let sq = 0;
        for (const e of res.embeddings) for (const l of e.layers) for (const x of l.vectors!.values) sq += x * x;
        return { kind: "norm", attentionNorm: Math.sqrt(sq), batchSize: texts.length };
      },
    });
    const aligned: { method: Method; rho: number }[] = [{ method: "sft", rho: 0 }, ...rhos.map((rho) => ({ method: "vaccine" as const, rho }))];
    for (const { method, rho } of aligned) {
      const id = alignId(method, rho, seed);
      cells.push({
        id,
        run: async () => {
          const started = Date.now();
          const { job } = await clients.align.createAlignJob({
            spec: {
              baseCheckpoint: base,
              dataset: builtin("alignment", { size: preset.align.size, seed }),
              method: method === "sft" ? { case: "sft", value: {} } : { case: "vaccine", value: { rho } },
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
    const runs: { method: Method; rho: number; p: number }[] = [
      ...preset.ratios.flatMap((p) => (["none", "sft", "vaccine"] as const).map((method) => ({ method, rho: method === "vaccine" ? preset.rho : 0, p }))),
      ...preset.sweep.filter((rho) => rho !== preset.rho || !preset.ratios.includes(preset.sweepRatio)).map((rho) => ({ method: "vaccine" as const, rho, p: preset.sweepRatio })),
    ];
    for (const { method, rho, p } of runs) {
      const id = fineTuneId(method, rho, p, seed);
      cells.push({
        id,
        run: async (results) => {
          const started = Date.now();
          const parent = method === "none" ? base : (results.cells[alignId(method, rho, seed)] as AlignResult).ref;
          const ft = preset.finetune;
          const { job } = await clients.fineTune.createFineTuneJob({
            spec: {
              alignedCheckpoint: parent,
              dataset: builtin(`${ft.task}-mix`, { size: ft.size, seed, ratio: p }),
              lora,
              training: { maxSteps: ft.steps, learningRate: ft.learningRate, batchSize: ft.batchSize, seed, checkpointEvery: ft.checkpointEvery },
            },
          });
          const states: { step: number; ref: Ref }[] = [];
          for await (const { event } of clients.fineTune.watchFineTuneJob({ jobId: job!.id })) {
            if (event?.event.case === "checkpointWritten") states.push({ step: event.event.value.step, ref: event.event.value.checkpoint! });
            if (event) progress(id)(event);
          }
          const done = (await clients.fineTune.getFineTuneJob({ jobId: job!.id })).job!;
          if (done.state !== JobState.SUCCEEDED) throw new Error(`job ${done.id} ended ${JobState[done.state]}: ${done.error?.message ?? ""}`);
          const ref = { uri: done.result!.uri, digest: done.result!.digest };
          const drift = [];
          for (const s of states) {
            const d = await clients.embed.computeDrift({ reference: parent, candidate: s.ref, probeDataset: builtin("alignment", { size: preset.eval.probeSize, seed: 999 }) });
            drift.push({ step: s.step, squared: d.totalSquaredNorm, l2: d.totalL2Norm });
          }
          const { hs, samples, classes } = await harmfulScore(ref, seed);
          let accuracy = 0;
          for await (const r of clients.score.scoreTask({
            checkpoint: ref,
            dataset: builtin(ft.task, { size: preset.eval.taskExamples, seed, split: DatasetSplit.TEST }),
            maxNewTokens: preset.eval.maxNewTokens,
          })) {
            if (r.result.case === "report") accuracy = r.result.value.accuracy;
          }
          return { kind: "finetune", ref, seconds: (Date.now() - started) / 1000, harmfulScore: hs, classes, accuracy, drift, harmfulSamples: samples };
        },
      });
    }
  }
  return cells;
}

/** Runs every cell not yet in out/results.json, saving after each. */
export async function runExperiment(preset: Preset, clients: Clients, base: Ref, out: string, hooks: RunnerHooks = {}): Promise<Results> {
  mkdirSync(out, { recursive: true });
  const file = join(out, "results.json");
  const previous = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Results) : undefined;
  // Results of another preset or base model are not reused.
  const sameRun = previous && JSON.stringify(previous.preset) === JSON.stringify(preset) && previous.base.digest === base.digest;
  const results: Results = sameRun
    ? previous
    : { preset, base, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? "", node: process.version }, cells: {} };
  const cells = planCells(preset, clients, base, hooks);
  for (const [index, cell] of cells.entries()) {
    if (results.cells[cell.id]) continue;
    hooks.onProgress?.({ cell: cell.id, index: index + 1, total: cells.length });
    results.cells[cell.id] = await cell.run(results);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify(results, null, 2) + "\n");
    renameSync(tmp, file);
  }
  return results;
}
