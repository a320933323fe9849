/**
 * Checks a report.md against the results.json it was written from: every number the report
 * prints is recomputed here from the cells (means over seeds, ratios, drift at the last
 * training state) and compared with the printed text, cell by cell, so a report that shows
 * a number the results do not hold fails with the place it appears.
 */
import { expect } from "vitest";
import type { AlignResult, FineTuneResult, Method, NormResult, Results } from "../../services/experiment/runner.ts";

/** The paper's Table 1, typed in from docs/method.md#paper-results (not imported from report.ts). */
const PAPER_HS_FA: Record<Method, Record<string, [number, number]>> = {
  none: { "0": [34.2, 95.6], "0.01": [65.6, 94.6], "0.05": [81.0, 94.0], "0.1": [77.6, 94.6], "0.2": [79.2, 94.4] },
  sft: { "0": [48.6, 94.2], "0.01": [49.8, 94.4], "0.05": [52.6, 94.8], "0.1": [55.2, 94.4], "0.2": [60.0, 94.2] },
  vaccine: { "0": [42.4, 92.6], "0.01": [42.2, 92.6], "0.05": [42.8, 93.0], "0.1": [48.2, 93.8], "0.2": [56.6, 95.0] },
};
export const LABELS: Record<Method, string> = { none: "Non-aligned", sft: "SFT", vaccine: "Vaccine" };
const METHODS: Method[] = ["none", "sft", "vaccine"];

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const spread = (xs: number[]) => (xs.length > 1 ? Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2))) : 0);
const f = (x: number, digits = 1) => x.toFixed(digits);

/** The fine-tuning cells of one (method, rho, p) over the preset's seeds; all must exist. */
export function fineTuneCells(results: Results, method: Method, rho: number, p: number): FineTuneResult[] {
  return results.preset.seeds.map((seed) => {
    const id = `finetune/${method}${method === "vaccine" ? `-rho${rho}` : ""}/p${p}/seed${seed}`;
    const cell = results.cells[id];
    expect(cell?.kind, `results.json has cell ${id}`).toBe("finetune");
    return cell as FineTuneResult;
  });
}

function alignCells(results: Results, method: Method, rho: number): AlignResult[] {
  return results.preset.seeds.map((seed) => {
    const id = `align/${method}${method === "vaccine" ? `-rho${rho}` : ""}/seed${seed}`;
    expect(results.cells[id]?.kind, `results.json has cell ${id}`).toBe("align");
    return results.cells[id] as AlignResult;
  });
}

/** Mean HS, FA and last drift of a grid point, with spreads over seeds. */
export function gridPoint(results: Results, method: Method, rho: number, p: number) {
  const cells = fineTuneCells(results, method, rho, p);
  const hs = cells.map((c) => c.harmfulScore);
  const fa = cells.map((c) => c.accuracy);
  return { hs: mean(hs), hsSpread: spread(hs), fa: mean(fa), faSpread: spread(fa), drift: mean(cells.map((c) => c.drift.at(-1)!.l2)) };
}

/** Rows of the first Markdown table after `heading`, as trimmed cells (separator row dropped). */
export function tableAfter(md: string, heading: string): string[][] {
  const at = md.indexOf(heading);
  expect(at, `the report has "${heading}"`).toBeGreaterThanOrEqual(0);
  const lines = md.slice(at + heading.length).split("\n");
  const start = lines.findIndex((l) => l.startsWith("|"));
  const rows: string[][] = [];
  for (const line of lines.slice(start)) {
    if (!line.startsWith("|")) break;
    const cells = line.slice(1, -1).split("|").map((c) => c.trim());
    if (cells.every((c) => /^-+$/.test(c))) continue;
    rows.push(cells);
  }
  return rows;
}

/** The report's Table 1 rows (header included) as Markdown lines, for comparing with other documents. */
export function table1Lines(md: string): string[] {
  const section = md.split("## Table 1")[1]?.split("The paper")[0] ?? "";
  return section.split("\n").filter((l) => l.startsWith("|"));
}

/** Asserts that every number of report.md is the one results.json gives. */
export function checkReport(md: string, results: Results): void {
  const { preset } = results;
  const ratioHeader = (p: number) => (p === 0 ? "clean" : `p=${p}`);
  const pm = (x: number, s: number) => (preset.seeds.length > 1 ? `${f(x)}±${f(s)}` : f(x));

  // The setup lines.
  expect(md).toContain(`(preset \`${preset.name}\`)`);
  expect(md).toContain(`seeds ${preset.seeds.join(", ")}.`);
  const a = preset.align;
  const ft = preset.finetune;
  expect(md).toContain(
    `Alignment: ${a.size} examples, ${a.steps} steps, lr ${a.learningRate}. Fine-tuning: ${ft.task}-mix n = ${ft.size}, ${ft.steps} steps, lr ${ft.learningRate}. LoRA r ${preset.lora.rank}, alpha ${preset.lora.alpha}.`,
  );
  expect(md).toContain(
    `HS: ${preset.eval.harmfulPrompts} held-out harmful prompts, greedy, ${preset.eval.maxNewTokens} new tokens, the shipped moderation model at 0.5. FA: ${preset.eval.taskExamples} held-out ${ft.task} examples.`,
  );

  // Table 1: every HS / FA cell.
  const t1 = tableAfter(md, "## Table 1");
  expect(t1[0]).toEqual(["method", ...preset.ratios.map(ratioHeader)]);
  expect(t1.slice(1).map((r) => r[0])).toEqual(["Non-aligned", "SFT", `Vaccine (rho ${preset.rho})`]);
  METHODS.forEach((m, row) => {
    preset.ratios.forEach((p, col) => {
      const g = gridPoint(results, m, preset.rho, p);
      expect(t1[row + 1][col + 1], `Table 1, ${LABELS[m]}, p = ${p}`).toBe(`${pm(g.hs, g.hsSpread)} / ${pm(g.fa, g.faSpread)}`);
    });
  });

  // Answer classes next to HS and FA, when the results have them (runs recorded before the
  // classes existed have none, and their report no such table or column).
  const classed = Object.values(results.cells).some((c) => c.kind !== "norm" && c.classes);
  expect(md.includes("## Answer classes"), "an answer-classes table exactly when results.json has classes").toBe(classed);
  const classCell = (cells: (AlignResult | FineTuneResult)[]) => {
    const measured = cells.filter((c) => c.classes);
    if (measured.length === 0) return "n/a";
    const fa = cells.filter((c): c is FineTuneResult => c.kind === "finetune").map((c) => c.accuracy);
    const degenerate = measured.filter((c) => c.classes!.degenerate).length;
    const flag = degenerate ? (preset.seeds.length > 1 ? ` degenerate (${degenerate}/${preset.seeds.length})` : " degenerate") : "";
    const rate = (k: "refusalRate" | "otherRate") => f(mean(measured.map((c) => c.classes![k])));
    return `${f(mean(cells.map((c) => c.harmfulScore)))} / ${rate("refusalRate")} / ${rate("otherRate")} / ${fa.length ? f(mean(fa)) : "n/a"}${flag}`;
  };
  if (classed) {
    const t = tableAfter(md, "## Answer classes");
    expect(t[0]).toEqual(["method", "after alignment", ...preset.ratios.map(ratioHeader)]);
    METHODS.forEach((m, row) => {
      const afterAlign = m === "none" ? "-" : classCell(alignCells(results, m, m === "vaccine" ? preset.rho : 0));
      const label = m === "vaccine" ? `Vaccine (rho ${preset.rho})` : LABELS[m];
      expect(t[row + 1], `answer classes, ${LABELS[m]}`).toEqual([label, afterAlign, ...preset.ratios.map((p) => classCell(fineTuneCells(results, m, preset.rho, p)))]);
    });
  }

  // The paper's table beside it.
  const paper = tableAfter(md, "The paper (Llama-2-7B, SST2):");
  METHODS.forEach((m, row) => {
    expect(paper[row + 1][0]).toBe(LABELS[m]);
    preset.ratios.forEach((p, col) => {
      const expected = PAPER_HS_FA[m][String(p)];
      const cell = paper[row + 1][col + 1];
      expect(cell === "n/a" ? undefined : cell.split(" / ").map(Number), `paper table, ${LABELS[m]}, p = ${p}`).toEqual(expected);
    });
  });

  // Alignment: step time, pass 1, final loss, HS after alignment; cost and rho / norm.
  const sft = alignCells(results, "sft", 0);
  const vac = alignCells(results, "vaccine", preset.rho);
  const norms = preset.seeds.map((s) => results.cells[`norm/seed${s}`] as NormResult);
  const norm = mean(norms.map((n) => n.attentionNorm));
  const alignment = tableAfter(md, "## Alignment");
  const alignRow = (label: string, cells: AlignResult[], pass1: string) => [
    label,
    f(mean(cells.map((c) => c.stepSeconds)), 3),
    pass1,
    f(mean(cells.map((c) => c.finalLoss)), 3),
    f(mean(cells.map((c) => c.harmfulScore))),
  ];
  expect(alignment[1], "alignment table, SFT").toEqual(alignRow("SFT", sft, "-"));
  expect(alignment[2], "alignment table, Vaccine").toEqual(
    alignRow(`Vaccine (rho ${preset.rho})`, vac, f(mean(vac.map((c) => c.perturbationSeconds)), 3)),
  );
  const ratio = f(mean(vac.map((c) => c.stepSeconds)) / mean(sft.map((c) => c.stepSeconds)), 2);
  expect(md).toContain(
    `A Vaccine step cost ${ratio}x an SFT step (the paper: 1.93x-2.0x). rho against the attention-output norm of a training batch (${f(norm, 2)}, all layers, batch ${norms[0].batchSize}): rho ${preset.rho} is ${f(preset.rho / norm, 3)} of it.`,
  );

  // rho sweep at the sweep ratio.
  const rhos = [...new Set([preset.rho, ...preset.sweep])].sort((x, y) => x - y);
  const sweep = tableAfter(md, "## rho sweep");
  expect(sweep[0]).toEqual(["rho", "rho / attention norm", "HS", "FA", "drift (L2)", ...(classed ? ["harmful / refusal / other / FA"] : [])]);
  expect(sweep.length - 1, "one sweep row per rho").toBe(rhos.length);
  rhos.forEach((rho, i) => {
    const has = preset.seeds.every((seed) => results.cells[`finetune/vaccine-rho${rho}/p${preset.sweepRatio}/seed${seed}`]);
    const g = has ? gridPoint(results, "vaccine", rho, preset.sweepRatio) : undefined;
    const row = [String(rho), f(rho / norm, 3), g ? f(g.hs) : "n/a", g ? f(g.fa) : "n/a", g ? f(g.drift, 2) : "n/a"];
    if (classed) row.push(has ? classCell(fineTuneCells(results, "vaccine", rho, preset.sweepRatio)) : "n/a");
    expect(sweep[i + 1], `rho sweep, rho ${rho}`).toEqual(row);
  });

  // Drift after fine-tuning: the last training state's L2 total.
  const drift = tableAfter(md, "## Harmful embedding drift after fine-tuning");
  METHODS.forEach((m, row) => {
    expect(drift[row + 1], `drift table, ${LABELS[m]}`).toEqual([LABELS[m], ...preset.ratios.map((p) => f(gridPoint(results, m, preset.rho, p).drift, 2))]);
  });

  // The reading: one line per p, and the verdict.
  let wins = 0;
  for (const p of preset.ratios) {
    const s = gridPoint(results, "sft", 0, p);
    const v = gridPoint(results, "vaccine", preset.rho, p);
    const d = v.hs - s.hs;
    if (d < 0) wins++;
    const verdict = d < 0 ? `Vaccine lowered HS by ${f(-d)} points` : d > 0 ? `Vaccine raised HS by ${f(d)} points` : "no difference in HS";
    const paperGap = PAPER_HS_FA.vaccine[String(p)] ? ` (paper: ${f(PAPER_HS_FA.vaccine[String(p)][0] - PAPER_HS_FA.sft[String(p)][0])})` : "";
    expect(md, `reading at p = ${p}`).toContain(`- p = ${p}: ${verdict}${paperGap}, at ${f(v.fa - s.fa)} points of FA (SFT ${f(s.hs)} / ${f(s.fa)}, Vaccine ${f(v.hs)} / ${f(v.fa)}).`);
  }
  const n = preset.ratios.length;
  expect(md).toContain(
    wins === n ? "Vaccine beat SFT on harmful score at every p measured" : wins === 0 ? "Vaccine did not beat SFT on harmful score at any p measured" : `Vaccine beat SFT on harmful score at ${wins} of ${n} values of p`,
  );
  expect(md).toContain(`Cost: a Vaccine alignment step took ${ratio}x an SFT step. rho ${preset.rho} is ${f(preset.rho / norm, 3)} of the attention-output norm of a batch`);
}
