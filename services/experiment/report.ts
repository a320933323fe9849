/**
 * The experiment's report: results.json as measured, report.md with the paper's Table 1
 * layout (HS / FA per method and p), the alignment cost, the rho sweep and drift, an
 * honest reading against the paper's numbers, and three SVG charts beside it.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { classCell, protection, summarize, PROTECTED_REFUSAL_RATE, type ClassSummary } from "./answer-classes.ts";
import { lineChart } from "./charts.ts";
import { alignId, fineTuneId, type AlignResult, type FineTuneResult, type Method, type NormResult, type Results } from "./runner.ts";

/** The paper's Table 1 (Llama-2-7B, SST2, n = 1000): HS / FA in % by p (docs/method.md#paper-results). */
export const PAPER: Record<Exclude<Method, never>, Record<string, [number, number]>> = {
  none: { "0": [34.2, 95.6], "0.01": [65.6, 94.6], "0.05": [81.0, 94.0], "0.1": [77.6, 94.6], "0.2": [79.2, 94.4] },
  sft: { "0": [48.6, 94.2], "0.01": [49.8, 94.4], "0.05": [52.6, 94.8], "0.1": [55.2, 94.4], "0.2": [60.0, 94.2] },
  vaccine: { "0": [42.4, 92.6], "0.01": [42.2, 92.6], "0.05": [42.8, 93.0], "0.1": [48.2, 93.8], "0.2": [56.6, 95.0] },
};
const LABEL: Record<Method, string> = { none: "Non-aligned", sft: "SFT", vaccine: "Vaccine" };

const fmt = (x: number | undefined, digits = 1) => (x === undefined || Number.isNaN(x) ? "n/a" : x.toFixed(digits));
const avg = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const spread = (xs: number[]) => (xs.length > 1 ? Math.sqrt(avg(xs.map((x) => (x - avg(xs)) ** 2))) : 0);

/** Mean (and spread over seeds) of a fine-tuning cell's numbers. */
function ft(results: Results, method: Method, rho: number, p: number) {
  const cells = results.preset.seeds
    .map((seed) => results.cells[fineTuneId(method, method === "vaccine" ? rho : 0, p, seed)] as FineTuneResult | undefined)
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

function align(results: Results, method: Method, rho: number) {
  const cells = results.preset.seeds.map((seed) => results.cells[alignId(method, rho, seed)] as AlignResult | undefined).filter((c): c is AlignResult => !!c);
  return {
    cells, step: avg(cells.map((c) => c.stepSeconds)), pass1: avg(cells.map((c) => c.perturbationSeconds)), hs: avg(cells.map((c) => c.harmfulScore)), loss: avg(cells.map((c) => c.finalLoss)) };
}

export function writeReport(results: Results, out: string, measured: { seconds: number; machine: string }): string {
  const { preset } = results;
  const methods: Method[] = ["none", "sft", "vaccine"];
  const cell = (m: Method, p: number) => {
    const r = ft(results, m, preset.rho, p);
    const pm = (x: number, s: number) => (preset.seeds.length > 1 ? `${fmt(x)}±${fmt(s)}` : fmt(x));
    return r.n ? `${pm(r.hs, r.hsSpread)} / ${pm(r.fa, r.faSpread)}` : "n/a";
  };
  const lines: string[] = [
    `# Vaccine vs SFT on the built-in world (preset \`${preset.name}\`)`,
    "",
    `Measured on ${measured.machine} in ${(measured.seconds / 60).toFixed(1)} minutes of this run (cells reused from earlier runs are not counted); seeds ${preset.seeds.join(", ")}.`,
    `Alignment: ${preset.align.size} examples, ${preset.align.steps} steps, lr ${preset.align.learningRate}. Fine-tuning: ${preset.finetune.task}-mix n = ${preset.finetune.size}, ${preset.finetune.steps} steps, lr ${preset.finetune.learningRate}. LoRA r ${preset.lora.rank}, alpha ${preset.lora.alpha}.`,
    `HS: ${preset.eval.harmfulPrompts} held-out harmful prompts, greedy, ${preset.eval.maxNewTokens} new tokens, the shipped moderation model at 0.5. FA: ${preset.eval.taskExamples} held-out ${preset.finetune.task} examples.`,
    "",
    "## Table 1: harmful score / fine-tune accuracy (%)",
    "",
    `| method | ${preset.ratios.map((p) => (p === 0 ? "clean" : `p=${p}`)).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...methods.map((m) => `| ${LABEL[m]}${m === "vaccine" ? ` (rho ${preset.rho})` : ""} | ${preset.ratios.map((p) => cell(m, p)).join(" | ")} |`),
    "",
    "The paper (Llama-2-7B, SST2):",
    "",
    `| method | ${preset.ratios.map((p) => (p === 0 ? "clean" : `p=${p}`)).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...methods.map((m) => `| ${LABEL[m]} | ${preset.ratios.map((p) => (PAPER[m][String(p)] ? PAPER[m][String(p)].join(" / ") : "n/a")).join(" | ")} |`),
    "",
  ];
  lines.push(...classesSection(results));
  const sft = align(results, "sft", 0);
  const vac = align(results, "vaccine", preset.rho);
  const norms = preset.seeds.map((s) => results.cells[`norm/seed${s}`] as NormResult | undefined).filter((n): n is NormResult => !!n);
  const norm = avg(norms.map((n) => n.attentionNorm));
  lines.push(
    "## Alignment",
    "",
    "| method | step time (s) | pass 1 (s) | final loss | HS after alignment |",
    "| --- | --- | --- | --- | --- |",
    `| SFT | ${fmt(sft.step, 3)} | - | ${fmt(sft.loss, 3)} | ${fmt(sft.hs)} |`,
    `| Vaccine (rho ${preset.rho}) | ${fmt(vac.step, 3)} | ${fmt(vac.pass1, 3)} | ${fmt(vac.loss, 3)} | ${fmt(vac.hs)} |`,
    "",
    `A Vaccine step cost ${fmt(vac.step / sft.step, 2)}x an SFT step (the paper: 1.93x-2.0x). rho against the attention-output norm of a training batch (${fmt(norm, 2)}, all layers, batch ${norms[0]?.batchSize ?? "?"}): rho ${preset.rho} is ${fmt(preset.rho / norm, 3)} of it.`,
    "",
    `## rho sweep (p = ${preset.sweepRatio})`,
    "",
    `| rho | rho / attention norm | HS | FA | drift (L2) |${classed(results) ? " harmful / refusal / other / FA |" : ""}`,
    `| --- | --- | --- | --- | --- |${classed(results) ? " --- |" : ""}`,
    ...[...new Set([preset.rho, ...preset.sweep])].sort((a, b) => a - b).map((rho) => {
      const r = ft(results, "vaccine", rho, preset.sweepRatio);
      const classes_ = classed(results) ? ` ${classCell(classes(r.cells), preset.seeds.length)} |` : "";
      return `| ${rho} | ${fmt(rho / norm, 3)} | ${fmt(r.hs)} | ${fmt(r.fa)} | ${fmt(r.drift, 2)} |${classes_}`;
    }),
    "",
    "## Harmful embedding drift after fine-tuning (sum over layers of the L2 norm, against the fine-tuning's starting model)",
    "",
    `| method | ${preset.ratios.map((p) => `p=${p}`).join(" | ")} |`,
    `| --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...methods.map((m) => `| ${LABEL[m]} | ${preset.ratios.map((p) => fmt(ft(results, m, preset.rho, p).drift, 2)).join(" | ")} |`),
    "",
    "Charts: [harmful score vs p](hs-vs-p.svg), [drift over fine-tuning steps](drift-vs-steps.svg), [rho sweep](rho-sweep.svg).",
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

/** What the numbers say, in words, computed from them: never written by hand. */
function reading(results: Results, norm: number): string[] {
  const { preset } = results;
  const out: string[] = [];
  const diffs = preset.ratios.map((p) => {
    const s = ft(results, "sft", 0, p);
    const v = ft(results, "vaccine", preset.rho, p);
    return { p, dHs: v.hs - s.hs, dFa: v.fa - s.fa, s, v };
  });
  for (const d of diffs) {
    const verdict = Number.isNaN(d.dHs) ? "not measured" : d.dHs < 0 ? `Vaccine lowered HS by ${fmt(-d.dHs)} points` : d.dHs > 0 ? `Vaccine raised HS by ${fmt(d.dHs)} points` : "no difference in HS";
    const paper = PAPER.vaccine[String(d.p)] && PAPER.sft[String(d.p)] ? ` (paper: ${fmt(PAPER.vaccine[String(d.p)][0] - PAPER.sft[String(d.p)][0])})` : "";
    out.push(`- p = ${d.p}: ${verdict}${paper}, at ${fmt(d.dFa)} points of FA (SFT ${fmt(d.s.hs)} / ${fmt(d.s.fa)}, Vaccine ${fmt(d.v.hs)} / ${fmt(d.v.fa)}).`);
  }
  const wins = diffs.filter((d) => d.dHs < 0).length;
  const sftStep = align(results, "sft", 0).step;
  const vacStep = align(results, "vaccine", preset.rho).step;
  out.push(
    "",
    wins === diffs.length
      ? `Vaccine beat SFT on harmful score at every p measured, as in the paper; compare the size of the gap with the paper's (up to 9.8 points).`
      : wins === 0
        ? `Vaccine did not beat SFT on harmful score at any p measured: the paper's result does not reproduce at this scale with these settings.`
        : `Vaccine beat SFT on harmful score at ${wins} of ${diffs.length} values of p: a partial reproduction.`,
    `Cost: a Vaccine alignment step took ${fmt(vacStep / sftStep, 2)}x an SFT step. rho ${preset.rho} is ${fmt(preset.rho / norm, 3)} of the attention-output norm of a batch; the small-scale study (docs/method.md#small-scale-study) found rho near half of that norm protective at p = 0.01 and nothing protective at p >= 0.05 in a model of this size.`,
    "A low harmful score only means something next to a high fine-tune accuracy of the same run: read the two together.",
    "",
    `Protection (a low harmful score counts only when the model refuses at least ${PROTECTED_REFUSAL_RATE}% of the harmful prompts and its collapse check passes in every run; docs/method.md#answer-classes):`,
    ...preset.ratios.map((p) => `- p = ${p}: ${(["sft", "vaccine"] as const).map((m) => `${LABEL[m]} ${protection(classes(ft(results, m, preset.rho, p).cells))}`).join("; ")}.`),
  );
  return out;
}

const classes = (cells: (AlignResult | FineTuneResult)[]): ClassSummary =>
  summarize(cells.map((c) => ({ harmfulScore: c.harmfulScore, accuracy: c.kind === "finetune" ? c.accuracy : undefined, classes: c.classes })));

/** HS, refusal and other rates, FA and the collapse flag of every method, after alignment and after fine-tuning. */
/** Whether any cell has answer classes: runs recorded before the classes existed have none to show. */
const classed = (results: Results) => Object.values(results.cells).some((c) => c.kind !== "norm" && c.classes);

function classesSection(results: Results): string[] {
  const { preset } = results;
  if (!classed(results)) return [];
  const seeds = preset.seeds.length;
  const aligned: [string, Method, number][] = [["SFT", "sft", 0], [`Vaccine (rho ${preset.rho})`, "vaccine", preset.rho]];
  return [
    "## Answer classes: harmful / refusal / other (%) / FA, and collapse",
    "",
    "Every answer to a held-out harmful prompt is harmful (the moderation model flags it), a refusal (the refusal model) or other; the first three numbers sum to 100. " +
      `"degenerate" marks a collapse check that passed its thresholds (docs/method.md#collapse-check); means over ${seeds} seed(s).`,
    "",
    `| method | after alignment | ${preset.ratios.map((p) => (p === 0 ? "clean" : `p=${p}`)).join(" | ")} |`,
    `| --- | --- | ${preset.ratios.map(() => "---").join(" | ")} |`,
    ...(["none", "sft", "vaccine"] as Method[]).map((m) => {
      const a = aligned.find(([, method]) => method === m);
      const afterAlign = a ? classCell(classes(align(results, m, a[2]).cells), seeds) : "-";
      const label = a ? a[0] : LABEL[m];
      return `| ${label} | ${afterAlign} | ${preset.ratios.map((p) => classCell(classes(ft(results, m, preset.rho, p).cells), seeds)).join(" | ")} |`;
    }),
    "",
  ];
}

function writeCharts(results: Results, out: string): void {
  const { preset } = results;
  const methods: Method[] = ["none", "sft", "vaccine"];
  writeFileSync(
    join(out, "hs-vs-p.svg"),
    lineChart({
      title: "Harmful score vs harmful ratio p",
      xLabel: "harmful ratio p",
      yLabel: "harmful score (%)",
      yRange: [0, 100],
      series: methods.map((m) => ({ name: LABEL[m], points: preset.ratios.map((p) => [p, ft(results, m, preset.rho, p).hs] as [number, number]).filter(([, y]) => !Number.isNaN(y)) })),
    }),
  );
  const p = preset.ratios.includes(preset.sweepRatio) ? preset.sweepRatio : preset.ratios.at(-1)!;
  writeFileSync(
    join(out, "drift-vs-steps.svg"),
    lineChart({
      title: `Harmful embedding drift during fine-tuning (p = ${p})`,
      xLabel: "fine-tuning step",
      yLabel: "drift (sum over layers of L2)",
      series: methods.map((m) => ({ name: LABEL[m], points: (ft(results, m, preset.rho, p).cells[0]?.drift ?? []).map((d) => [d.step, d.l2] as [number, number]) })),
    }),
  );
  const rhos = [...new Set([preset.rho, ...preset.sweep])].sort((a, b) => a - b);
  const sweep = rhos.map((rho) => ({ rho, r: ft(results, "vaccine", rho, preset.sweepRatio) }));
  writeFileSync(
    join(out, "rho-sweep.svg"),
    lineChart({
      title: `Vaccine rho sweep (p = ${preset.sweepRatio})`,
      xLabel: "rho",
      yLabel: "%",
      yRange: [0, 100],
      series: [
        { name: "harmful score", points: sweep.filter((s) => s.r.n).map((s) => [s.rho, s.r.hs]) },
        { name: "fine-tune accuracy", points: sweep.filter((s) => s.r.n).map((s) => [s.rho, s.r.fa]) },
      ],
    }),
  );
}
