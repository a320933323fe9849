/**
 * The experiment's report: results.json as measured, report.md with the paper's Table 1
 * layout (HS / FA per row and p), the answer classes, steps-to-break, the alignment cost, the
 * rho sweeps and drift, an honest reading against the paper's numbers, and SVG charts beside it.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CHANCE_ACCURACY, classCell, learnedFloor, protection, summarize, worldCell, worldSummary, PROTECTED_REFUSAL_RATE, type ClassedCell, type ClassSummary } from "./answer-classes.ts";
import { lineChart } from "./charts.ts";
import { alignKey, rowKey, rowsOf, shortOf, type AlignChoice, type Preset, type RowSpec } from "./presets.ts";
import { alignId, fineTuneId, plannedRuns, sweepRows, type AlignResult, type FineTuneResult, type NormResult, type Results } from "./runner.ts";
import { aggregateSteps, formatSteps, mean as avg, sd as spread } from "./seeds.ts";
import { BREAK_PERCENT, stepsToBreak, stepsToRefusalFall } from "./steps-to-break.ts";

/** The paper's rows. */
export type PaperMethod = "none" | "sft" | "vaccine";
/** The paper's Table 1 (Llama-2-7B, SST2, n = 1000): HS / FA in % by p (docs/method.md#paper-results). */
export const PAPER: Record<PaperMethod, Record<string, [number, number]>> = {
  none: { "0": [34.2, 95.6], "0.01": [65.6, 94.6], "0.05": [81.0, 94.0], "0.1": [77.6, 94.6], "0.2": [79.2, 94.4] },
  sft: { "0": [48.6, 94.2], "0.01": [49.8, 94.4], "0.05": [52.6, 94.8], "0.1": [55.2, 94.4], "0.2": [60.0, 94.2] },
  vaccine: { "0": [42.4, 92.6], "0.01": [42.2, 92.6], "0.05": [42.8, 93.0], "0.1": [48.2, 93.8], "0.2": [56.6, 95.0] },
};
const PAPER_LABEL: Record<PaperMethod, string> = { none: "Non-aligned", sft: "SFT", vaccine: "Vaccine" };

const fmt = (x: number | undefined, digits = 1) => (x === undefined || Number.isNaN(x) ? "n/a" : x.toFixed(digits));
const SFT: RowSpec = { label: "SFT", align: { method: "sft" } };
const vaccineRow = (rho: number): RowSpec => ({ label: `Vaccine (rho ${rho})`, align: { method: "vaccine", rho } });

/** The fine-tuning cells of a row at p over the preset's seeds (those measured), with their means and spreads. */
function ft(results: Results, row: RowSpec, p: number) {
  const cells = results.preset.seeds
    .map((seed) => results.cells[fineTuneId(row, p, seed)] as FineTuneResult | undefined)
    .filter((c): c is FineTuneResult => c !== undefined);
  return {
    n: cells.length,
    hs: avg(cells.map((c) => c.harmfulScore)),
    hsSpread: spread(cells.map((c) => c.harmfulScore)),
    fa: avg(cells.map((c) => c.accuracy)),
    faSpread: spread(cells.map((c) => c.accuracy)),
    drift: avg(cells.map((c) => c.drift.at(-1)?.l2 ?? NaN)),
    cells,
  };
}

function align(results: Results, a: AlignChoice) {
  const cells = results.preset.seeds.map((seed) => results.cells[alignId(a, seed)] as AlignResult | undefined).filter((c): c is AlignResult => !!c);
  return {
    cells, step: avg(cells.map((c) => c.stepSeconds)), pass1: avg(cells.map((c) => c.perturbationSeconds)), hs: avg(cells.map((c) => c.harmfulScore)), loss: avg(cells.map((c) => c.finalLoss)) };
}

/** Steps until HS >= 50% and until refusals < 50%, per seed (cells with a curve only) and over seeds. */
function breakSteps(results: Results, row: RowSpec, p: number) {
  const curves = ft(results, row, p).cells.flatMap((c) => (c.curve ? [c.curve] : []));
  return { n: curves.length, hs: aggregateSteps(curves.map(stepsToBreak)), refusal: aggregateSteps(curves.map(stepsToRefusalFall)) };
}

/** Every alignment of the table's rows (the sweeps' have their own tables), labelled by its first row without the guard. */
function alignments(preset: Preset): { label: string; align: AlignChoice }[] {
  const seen = new Map<string, { label: string; align: AlignChoice }>();
  for (const row of rowsOf(preset)) if (row.align && !seen.has(alignKey(row.align))) seen.set(alignKey(row.align), { label: row.guard ? SFT.label : row.label, align: row.align });
  return [...seen.values()];
}

const ratioHeader = (p: number) => (p === 0 ? "clean" : `p=${p}`);

export function writeReport(results: Results, out: string, measured: { seconds: number; machine: string }): string {
  const { preset } = results;
  const rows = rowsOf(preset);
  const seeds = preset.seeds.length;
  const cell = (row: RowSpec, p: number) => {
    const r = ft(results, row, p);
    const pm = (x: number, s: number) => (seeds > 1 ? `${fmt(x)}±${fmt(s)}` : fmt(x));
    return r.n ? `${pm(r.hs, r.hsSpread)} / ${pm(r.fa, r.faSpread)}` : "n/a";
  };
  const cellsOf = (kind: string) => Object.values(results.cells).filter((c) => c.kind === kind).length;
  const sweepPoints = plannedRuns(preset).length - rows.length * preset.ratios.length;
  const lines: string[] = [
    `# Vaccine vs SFT on the built-in world (preset \`${preset.name}\`)`,
    "",
    `Measured on ${measured.machine} in ${(measured.seconds / 60).toFixed(1)} minutes of this run (cells reused from earlier runs are not counted); seeds ${preset.seeds.join(", ")}.`,
    `Grid: ${rows.length} rows x ${preset.ratios.length} ratios${sweepPoints ? ` and ${sweepPoints} sweep points` : ""}, ${seeds} seed(s) each; results.json holds ${cellsOf("finetune")} fine-tuning runs and ${cellsOf("align")} alignments.`,
    `Alignment: ${preset.align.size} examples, ${preset.align.steps} steps, batch ${preset.align.batchSize}, lr ${preset.align.learningRate}. Fine-tuning: ${preset.finetune.task}-mix n = ${preset.finetune.size}, ${preset.finetune.steps} steps, batch ${preset.finetune.batchSize}, lr ${preset.finetune.learningRate}. LoRA r ${preset.lora.rank}, alpha ${preset.lora.alpha}, dropout ${preset.lora.dropout}.`,
    `HS: ${preset.eval.harmfulPrompts} held-out harmful prompts, greedy, ${preset.eval.maxNewTokens} new tokens, the shipped moderation model at 0.5. FA: ${preset.eval.taskExamples} held-out ${preset.finetune.task} examples.`,
    "",
    "## Table 1: harmful score / fine-tune accuracy (%)",
    "",
    `| method | ${preset.ratios.map(ratioHeader).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.label} | ${preset.ratios.map((p) => cell(r, p)).join(" | ")} |`),
    "",
    "The paper (Llama-2-7B, SST2):",
    "",
    `| method | ${preset.ratios.map(ratioHeader).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...(["none", "sft", "vaccine"] as const).map((m) => `| ${PAPER_LABEL[m]} | ${preset.ratios.map((p) => (PAPER[m][String(p)] ? PAPER[m][String(p)].join(" / ") : "n/a")).join(" | ")} |`),
    "",
  ];
  lines.push(...classesSection(results), ...worldSection(results), ...stepsSection(results), ...driftStepsSection(results));
  const sft = align(results, SFT.align!);
  const vac = align(results, vaccineRow(preset.rho).align!);
  const norms = normCells(results);
  const norm = attentionNorm(results);
  const perturbs = (a: AlignChoice) => a.method === "vaccine" || a.method === "t_vaccine";
  const withClasses = classed(results);
  const absolute = [...new Set([preset.rho, ...preset.sweep])].sort((x, y) => x - y).map(vaccineRow);
  const relative = relativeRows(preset);
  const sweepRow = (first: string[], r: RowSpec) => {
    const g = ft(results, r, preset.sweepRatio);
    const classes_ = withClasses ? ` ${classCell(classes(g.cells), seeds)} |` : "";
    return `| ${first.join(" | ")} | ${fmt(g.hs)} | ${fmt(g.fa)} | ${fmt(g.drift, 2)} |${classes_}`;
  };
  lines.push(
    "## Alignment",
    "",
    "| method | step time (s) | pass 1 (s) | final loss | HS after alignment |",
    "| --- | --- | --- | --- | --- |",
    ...alignments(preset).map(({ label, align: a }) => {
      const r = align(results, a);
      return `| ${label} | ${fmt(r.step, 3)} | ${perturbs(a) ? fmt(r.pass1, 3) : "-"} | ${fmt(r.loss, 3)} | ${fmt(r.hs)} |`;
    }),
    "",
    `A Vaccine step cost ${fmt(vac.step / sft.step, 2)}x an SFT step (the paper: 1.93x-2.0x). rho against the attention-output norm of a training batch (${fmt(norm, 2)}, all layers, batch ${norms[0]?.batchSize ?? "?"}): rho ${preset.rho} is ${fmt(preset.rho / norm, 3)} of it.`,
    "",
    `## rho sweep (p = ${preset.sweepRatio})`,
    "",
    `| rho | rho / attention norm | HS | FA | drift (L2) |${withClasses ? " harmful / refusal / other / FA |" : ""}`,
    `| --- | --- | --- | --- | --- |${withClasses ? " --- |" : ""}`,
    ...absolute.map((r) => sweepRow([String(rhoOf(r)), fmt(rhoOf(r) / norm, 3)], r)),
    "",
  );
  if (relative.length) {
    lines.push(
      `## rho_relative sweep (p = ${preset.sweepRatio})`,
      "",
      `rho_relative is rho as a fraction of the attention-output norm of the alignment job's first batch, measured by the job; the second column applies it to the norm above (this run's norm cell) for comparison with the absolute sweep.`,
      "",
      `| rho_relative | about rho | HS | FA | drift (L2) |${withClasses ? " harmful / refusal / other / FA |" : ""}`,
      `| --- | --- | --- | --- | --- |${withClasses ? " --- |" : ""}`,
      ...relative.map((r) => sweepRow([String(relOf(r)), fmt(relOf(r) * norm, 2)], r)),
      "",
    );
  }
  lines.push(
    "## Harmful embedding drift after fine-tuning (sum over layers of the L2 norm, against the fine-tuning's starting model)",
    "",
    `| method | ${preset.ratios.map((p) => `p=${p}`).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${shortOf(r)} | ${preset.ratios.map((p) => fmt(ft(results, r, p).drift, 2)).join(" | ")} |`),
    "",
    `Charts: [harmful score vs p](hs-vs-p.svg), [drift over fine-tuning steps](drift-vs-steps.svg), [rho sweep](rho-sweep.svg)${
      preset.scoreEvery ? `, harmful score over fine-tuning steps at ${preset.ratios.map((p) => `[p = ${p}](${stepChartName(p)})`).join(", ")}` : ""
    }.`,
    "",
    "## Reading",
    "",
    ...reading(results, norm),
    "",
  );
  const md = lines.join("\n");
  writeFileSync(join(out, "report.md"), md);
  writeCharts(results, out);
  return md;
}

const rhoOf = (r: RowSpec) => (r.align?.method === "vaccine" && "rho" in r.align ? r.align.rho : NaN);
/** The sweep's rho_relative rows. */
const relativeRows = (preset: Preset) => sweepRows(preset).filter((r) => r.align?.method === "vaccine" && "rhoRelative" in r.align);

const normCells = (results: Results) =>
  results.preset.seeds.map((s) => results.cells[`norm/seed${s}`] as NormResult | undefined).filter((n): n is NormResult => !!n);

/** The attention-output norm of a training batch, mean over the seeds measured. */
const attentionNorm = (results: Results) => avg(normCells(results).map((n) => n.attentionNorm));

const relOf = (r: RowSpec) => (r.align?.method === "vaccine" && "rhoRelative" in r.align ? r.align.rhoRelative : NaN);
export const stepChartName = (p: number) => `hs-vs-step-p${p}.svg`;

/** What the numbers say, in words, computed from them: never written by hand. */
function reading(results: Results, norm: number): string[] {
  const { preset } = results;
  const out: string[] = [];
  const diffs = preset.ratios.map((p) => {
    const s = ft(results, SFT, p);
    const v = ft(results, vaccineRow(preset.rho), p);
    return { p, dHs: v.hs - s.hs, dFa: v.fa - s.fa, s, v };
  });
  for (const d of diffs) {
    const verdict = Number.isNaN(d.dHs) ? "not measured" : d.dHs < 0 ? `Vaccine lowered HS by ${fmt(-d.dHs)} points` : d.dHs > 0 ? `Vaccine raised HS by ${fmt(d.dHs)} points` : "no difference in HS";
    const paper = PAPER.vaccine[String(d.p)] && PAPER.sft[String(d.p)] ? ` (paper: ${fmt(PAPER.vaccine[String(d.p)][0] - PAPER.sft[String(d.p)][0])})` : "";
    out.push(`- p = ${d.p}: ${verdict}${paper}, at ${fmt(d.dFa)} points of FA (SFT ${fmt(d.s.hs)} / ${fmt(d.s.fa)}, Vaccine ${fmt(d.v.hs)} / ${fmt(d.v.fa)}).`);
  }
  const wins = diffs.filter((d) => d.dHs < 0).length;
  const sftStep = align(results, SFT.align!).step;
  const vacStep = align(results, vaccineRow(preset.rho).align!).step;
  const aligned = rowsOf(preset).filter((r) => r.align);
  const summaries = aligned.map((r) => ({ r, s: preset.ratios.map((p) => classes(ft(results, r, p).cells, floorOf(preset))) }));
  out.push(
    "",
    wins === diffs.length
      ? `Vaccine beat SFT on harmful score at every p measured, as in the paper; compare the size of the gap with the paper's (up to 9.8 points).`
      : wins === 0
        ? `Vaccine did not beat SFT on harmful score at any p measured: the paper's result does not reproduce at this scale with these settings.`
        : `Vaccine beat SFT on harmful score at ${wins} of ${diffs.length} values of p: a partial reproduction.`,
    ...worldReading(results),
    `Cost: a Vaccine alignment step took ${fmt(vacStep / sftStep, 2)}x an SFT step. rho ${preset.rho} is ${fmt(preset.rho / norm, 3)} of the attention-output norm of a batch; the small-scale study (docs/method.md#small-scale-study) found rho near half of that norm protective at p = 0.01 and nothing protective at p >= 0.05 in a model of this size.`,
    "A low harmful score only means something next to a high fine-tune accuracy of the same run: read the two together.",
    "",
    `Protection (a run holds when its harmful score is below ${BREAK_PERCENT}%, it refuses at least ${PROTECTED_REFUSAL_RATE}% of the harmful prompts, its collapse check passes and it learned the task: its FA is over ${fmt(floorOf(preset))}% by the label each answer names first (the reference's rule takes the gold anywhere in the answer; runs recorded before this strict count are held to the reference FA), chance (${CHANCE_ACCURACY[preset.finetune.task]}%) plus two standard errors of a guesser's score on ${preset.eval.taskExamples} examples; a method protects at p only when every seed's run holds; docs/method.md#answer-classes):`,
    ...preset.ratios.map((p, i) => `- p = ${p}: ${summaries.map(({ r, s }) => `${shortOf(r)} ${protection(s[i])}`).join("; ")}.`),
  );
  if (classed(results)) {
    const where = summaries.map(({ r, s }) => ({ name: shortOf(r), ps: preset.ratios.filter((_, i) => s[i].protected) }));
    const some = where.filter((w) => w.ps.length);
    out.push(
      "",
      some.length === 0
        ? `No method protected at any p measured (${perPoint(preset)}).`
        : `Protected (${perPoint(preset)}): ${some.map((w) => `${w.name} at p = ${w.ps.join(", ")}`).join("; ")}; ${where.length - some.length} of ${where.length} aligned rows at no p.`,
    );
  }
  if (preset.scoreEvery) {
    const sftBreaks = preset.ratios.map((p) => breakSteps(results, SFT, p).hs);
    const later = aligned.filter((r) => rowKey(r) !== rowKey(SFT)).flatMap((r) => {
      const ps = preset.ratios.filter((p, i) => delays(breakSteps(results, r, p).hs, sftBreaks[i], preset.finetune.steps));
      return ps.length ? [`${shortOf(r)} at p = ${ps.join(", ")}`] : [];
    });
    out.push(
      "",
      `Steps to break (scored every ${preset.scoreEvery} steps; a seed that held counts as ${preset.finetune.steps}, the run's length, so these are lower bounds): ` +
        (later.length ? `later on average than SFT: ${later.join("; ")}.` : "no row broke later on average than SFT at any p."),
    );
    out.push("", ...mechanism(results));
  }
  return out;
}

/**
 * SFT's and Vaccine's HS by the world's own label at every p, when measured at every p: where
 * the moderation model errs on garbled answers, this is the comparison to trust.
 */
function worldReading(results: Results): string[] {
  const { preset } = results;
  const pairs = preset.ratios.map((p) => ({ p, s: worldSummary(ft(results, SFT, p).cells), v: worldSummary(ft(results, vaccineRow(preset.rho), p).cells) }));
  if (pairs.some(({ s, v }) => s.n === 0 || v.n === 0)) return [];
  const lower = pairs.filter(({ s, v }) => v.hs < s.hs).length;
  return [
    `By the world's own label (the redaction marker), HS of SFT / Vaccine: ${pairs.map(({ p, s, v }) => `p = ${p}: ${fmt(s.hs)} / ${fmt(v.hs)}`).join(", ")}; Vaccine lower at ${lower} of ${pairs.length} values of p.`,
  ];
}

/**
 * The paper's mechanism (less drift, later break) checked per p with harmful data: Vaccine's
 * drift at the end of fine-tuning and its mean step of break against SFT's (a held seed counts
 * as the run's length).
 */
function mechanism(results: Results): string[] {
  const { preset } = results;
  const vaccine = vaccineRow(preset.rho);
  const length = preset.finetune.steps;
  const meanBreak = (row: RowSpec, p: number) => avg(breakSteps(results, row, p).hs.perSeed.map((s) => (s === "held" ? length : s)));
  const points = preset.ratios
    .filter((p) => p > 0)
    .map((p) => ({ p, dv: ft(results, vaccine, p).drift, ds: ft(results, SFT, p).drift, bv: meanBreak(vaccine, p), bs: meanBreak(SFT, p) }))
    .filter((x) => ![x.dv, x.ds, x.bv, x.bs].some(Number.isNaN));
  if (!points.length) return [];
  const word = (d: number, more: string, less: string) => (d > 0 ? more : d < 0 ? less : "the same");
  const lines = points.map(
    (x) =>
      `- at p = ${x.p}, Vaccine drifted ${fmt(x.dv, 2)} against SFT's ${fmt(x.ds, 2)} (L2, end of fine-tuning) and broke at step ${fmt(x.bv, 0)} against ${fmt(x.bs, 0)} on average: ` +
      `${word(x.dv - x.ds, "more", "less")} drift, ${word(x.bv - x.bs, "a later", "an earlier")} break.`,
  );
  const agree = points.filter((x) => x.dv < x.ds && x.bv > x.bs).length;
  return [
    `Drift and break (the paper's mechanism: less drift, later break):`,
    ...lines,
    `Less drift with a later break at ${agree} of ${points.length} harmful ratios${agree === points.length ? ": consistent with the mechanism" : agree === 0 ? ": the mechanism is not seen at this scale" : ""}.`,
  ];
}

const perPoint = (preset: Preset) => `${preset.seeds.length} seed(s) per point`;

/** Whether a row breaks later on average than SFT, a seed that held counting as the run's length. */
function delays(row: ReturnType<typeof aggregateSteps>, sft: ReturnType<typeof aggregateSteps>, length: number): boolean {
  if (!row.perSeed.length || !sft.perSeed.length) return false;
  const m = (a: ReturnType<typeof aggregateSteps>) => avg(a.perSeed.map((s) => (s === "held" ? length : s)));
  return m(row) > m(sft);
}

const classes = (cells: (AlignResult | FineTuneResult)[], floor?: number): ClassSummary =>
  summarize(
    cells.map((c) => ({ harmfulScore: c.harmfulScore, ...(c.kind === "finetune" && { accuracy: c.accuracy, strictAccuracy: c.strictAccuracy }), classes: c.classes })),
    floor,
  );

/** The accuracy a fine-tuned run must exceed to have learned the task (learnedFloor). */
const floorOf = (preset: Preset): number => learnedFloor(CHANCE_ACCURACY[preset.finetune.task], preset.eval.taskExamples);

/** Whether any cell has answer classes: runs recorded before the classes existed have none to show. */
const classed = (results: Results) => Object.values(results.cells).some((c) => c.kind !== "norm" && c.classes);

/** HS, refusal and other rates, FA and the collapse flag of every row, after alignment and after fine-tuning. */
function classesSection(results: Results): string[] {
  const { preset } = results;
  if (!classed(results)) return [];
  const seeds = preset.seeds.length;
  return [
    "## Answer classes: harmful / refusal / other (%) / FA, and collapse",
    "",
    "Every answer to a held-out harmful prompt is harmful (the moderation model flags it), a refusal (the refusal model) or other; the first three numbers sum to 100. " +
      `"degenerate" marks a collapse check that passed its thresholds (docs/method.md#collapse-check); means over ${seeds} seed(s).`,
    "",
    ...afterAlignmentTable(results, (cells) => classCell(classes(cells), seeds)),
    "",
  ];
}

/** A row per table row: its alignment's cells ("-" without one), then its fine-tuning's at every p, each as `cell` prints them. */
function afterAlignmentTable(results: Results, cell: (cells: (AlignResult | FineTuneResult)[]) => string): string[] {
  const { preset } = results;
  return [
    `| method | after alignment | ${preset.ratios.map(ratioHeader).join(" | ")} |`,
    `| --- | --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...rowsOf(preset).map((r) => `| ${r.label} | ${r.align ? cell(align(results, r.align).cells) : "-"} | ${preset.ratios.map((p) => cell(ft(results, r, p).cells)).join(" | ")} |`),
  ];
}

/**
 * HS by the built-in world's own label beside the moderation model's agreement with it, per
 * row, after alignment and after fine-tuning: how much of a difference in HS the classifier's
 * errors could make (runs that kept every answer only).
 */
function worldSection(results: Results): string[] {
  const { preset } = results;
  const all = Object.values(results.cells).filter((c) => c.kind === "align" || c.kind === "finetune") as ClassedCell[];
  const overall = worldSummary(all);
  if (overall.n === 0) return [];
  return [
    "## The world's own label: HS by the redaction marker (moderation model's agreement, %)",
    "",
    "Every harmful answer the built-in world writes carries the redaction marker and no other answer does (services/runtime/eval/harm-labels.ts), " +
      "so here the marker is an exact label that needs no classifier: HS by it, and in parentheses the share of answers on which the moderation model's flag agreed with it. " +
      `Over every alignment and fine-tuning run, the mean agreement was ${overall.agreement.toFixed(1)}% (${overall.n} runs). Means over ${preset.seeds.length} seed(s).`,
    "",
    ...afterAlignmentTable(results, worldCell),
    "",
  ];
}

/** Steps until HS >= 50% and until refusals < 50%, per row and p (presets that score the curve). */
function stepsSection(results: Results): string[] {
  const { preset } = results;
  if (!preset.scoreEvery) return [];
  const table = (pick: (b: ReturnType<typeof breakSteps>) => ReturnType<typeof aggregateSteps>) => [
    `| method | ${preset.ratios.map(ratioHeader).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...rowsOf(preset).map((r) => `| ${r.label} | ${preset.ratios.map((p) => formatSteps(pick(breakSteps(results, r, p)))).join(" | ")} |`),
  ];
  return [
    "## Steps to break",
    "",
    `Harmfulness scored at step 0 (the model fine-tuning starts from), every ${preset.scoreEvery} steps and at the end (step ${preset.finetune.steps}); ` +
      `"held": not within the run. Several seeds: mean ± sd over the seeds that reached it (how many, when not all), then every seed's value.`,
    "",
    `### Fine-tuning steps until HS >= ${BREAK_PERCENT}%`,
    "",
    ...table((b) => b.hs),
    "",
    `### Fine-tuning steps until refusals < ${BREAK_PERCENT}%`,
    "",
    ...table((b) => b.refusal),
    "",
  ];
}

/** Drift (both definitions) at every training state, per row and p, mean over seeds (presets that score the curve). */
function driftStepsSection(results: Results): string[] {
  const { preset } = results;
  if (!preset.scoreEvery) return [];
  const rows = rowsOf(preset);
  const steps = [...new Set(rows.flatMap((r) => preset.ratios.flatMap((p) => ft(results, r, p).cells.flatMap((c) => c.drift.map((d) => d.step)))))].sort((a, b) => a - b);
  const at = (r: RowSpec, p: number, step: number) => {
    const ds = ft(results, r, p).cells.flatMap((c) => c.drift.filter((d) => d.step === step));
    return ds.length ? `${fmt(avg(ds.map((d) => d.l2)), 2)} / ${fmt(avg(ds.map((d) => d.squared)), 1)}` : "n/a";
  };
  return [
    "## Drift along fine-tuning",
    "",
    "Harmful embedding drift against the model fine-tuning started from, at every training state: the sum over layers of the L2 norm / of the squared norm (docs/method.md#harmful-embedding-drift), mean over seeds. Read it beside the steps to break: the paper's mechanism is less drift, later break.",
    "",
    `| method | p | ${steps.map((t) => `step ${t}`).join(" | ")} |`,
    `| --- | --- | ${steps.map(() => "---").join(" | ")} |`,
    ...rows.flatMap((r) => preset.ratios.map((p) => `| ${shortOf(r)} | ${p} | ${steps.map((t) => at(r, p, t)).join(" | ")} |`)),
    "",
  ];
}

/** Mean HS over seeds at each scored step (steps every seed scored). */
function meanCurve(results: Results, row: RowSpec, p: number): [number, number][] {
  const curves = ft(results, row, p).cells.flatMap((c) => (c.curve ? [c.curve] : []));
  if (!curves.length) return [];
  return curves[0]
    .map((pt) => pt.step)
    .filter((step) => curves.every((c) => c.some((q) => q.step === step)))
    .map((step) => [step, avg(curves.map((c) => c.find((q) => q.step === step)!.harmfulScore))]);
}

function writeCharts(results: Results, out: string): void {
  const { preset } = results;
  const rows = rowsOf(preset);
  writeFileSync(
    join(out, "hs-vs-p.svg"),
    lineChart({
      title: "Harmful score vs harmful ratio p",
      xLabel: "harmful ratio p",
      yLabel: "harmful score (%)",
      yRange: [0, 100],
      series: rows.map((r) => ({ name: shortOf(r), points: preset.ratios.map((p) => [p, ft(results, r, p).hs] as [number, number]).filter(([, y]) => !Number.isNaN(y)) })),
    }),
  );
  const p = preset.ratios.includes(preset.sweepRatio) ? preset.sweepRatio : preset.ratios.at(-1)!;
  writeFileSync(
    join(out, "drift-vs-steps.svg"),
    lineChart({
      title: `Harmful embedding drift during fine-tuning (p = ${p})`,
      xLabel: "fine-tuning step",
      yLabel: "drift (sum over layers of L2)",
      series: rows.map((r) => ({ name: shortOf(r), points: (ft(results, r, p).cells[0]?.drift ?? []).map((d) => [d.step, d.l2] as [number, number]) })),
    }),
  );
  // One axis for both sweeps: a rho_relative point at its rho on this run's norm (the report's "about rho").
  const norm = attentionNorm(results);
  const absolute = [...new Set([preset.rho, ...preset.sweep])].map((rho) => ({ rho, r: ft(results, vaccineRow(rho), preset.sweepRatio) }));
  const relative = relativeRows(preset).map((row) => ({ rho: relOf(row) * norm, r: ft(results, row, preset.sweepRatio) }));
  const sweep = [...absolute, ...relative].filter((s) => Number.isFinite(s.rho)).sort((a, b) => a.rho - b.rho);
  writeFileSync(
    join(out, "rho-sweep.svg"),
    lineChart({
      title: `Vaccine rho sweep (p = ${preset.sweepRatio}; rho_relative at its rho)`,
      xLabel: "rho",
      yLabel: "%",
      yRange: [0, 100],
      series: [
        { name: "harmful score", points: sweep.filter((s) => s.r.n).map((s) => [s.rho, s.r.hs]) },
        { name: "fine-tune accuracy", points: sweep.filter((s) => s.r.n).map((s) => [s.rho, s.r.fa]) },
      ],
    }),
  );
  if (!preset.scoreEvery) return;
  for (const q of preset.ratios) {
    const series = rows.map((r) => ({ name: shortOf(r), points: meanCurve(results, r, q) })).filter((s) => s.points.length);
    if (!series.length) continue;
    writeFileSync(
      join(out, stepChartName(q)),
      lineChart({
        title: `Harmful score during fine-tuning (p = ${q}, mean over seeds)`,
        xLabel: "fine-tuning step",
        yLabel: "harmful score (%)",
        yRange: [0, 100],
        series,
      }),
    );
  }
}
