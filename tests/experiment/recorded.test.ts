// The committed quick run (results/quick) and the README's account of it: report.md and the
// charts agree with results.json, and every number the README's experiment section states
// comes from them. It only reads files: no training.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PRESETS, rowsOf, shortOf } from "../../services/experiment/presets.ts";
import type { NormResult, Results } from "../../services/experiment/runner.ts";
import { checkReport, fineTuneCells, gridPoint, table1Lines, vaccine } from "./report-check.ts";
import { chartPoints, chartProblems } from "./svg-check.ts";

const DIR = "results/quick";
const results = JSON.parse(readFileSync(join(DIR, "results.json"), "utf8")) as Results;
const report = readFileSync(join(DIR, "report.md"), "utf8");
const readme = readFileSync("README.md", "utf8");

/** The README's "## The experiment" section, up to the next section. */
function experimentSection(): string {
  const parts = readme.split("\n## The experiment\n");
  expect(parts.length, 'README.md has one "## The experiment" section').toBe(2);
  return parts[1].split("\n## ")[0];
}

describe("the recorded quick run (results/quick)", () => {
  it("was made with the quick preset as it stands", () => {
    expect(results.preset).toEqual(PRESETS.quick);
  });

  it("report.md prints exactly the numbers of results.json", () => {
    checkReport(report, results);
  });

  it("its charts are well-formed SVG plotting results.json", () => {
    const { preset } = results;
    const chart = (name: string) => {
      const src = readFileSync(join(DIR, name), "utf8");
      expect(chartProblems(src), name).toEqual([]);
      return chartPoints(src);
    };
    const hs = chart("hs-vs-p.svg");
    for (const r of rowsOf(preset)) {
      expect(hs.get(shortOf(r)), `hs-vs-p.svg, ${r.label}`).toEqual(preset.ratios.map((p) => [p, gridPoint(results, r, p).hs]));
    }
    const driftRatio = preset.ratios.includes(preset.sweepRatio) ? preset.sweepRatio : preset.ratios.at(-1)!;
    const drift = chart("drift-vs-steps.svg");
    for (const r of rowsOf(preset)) {
      const first = fineTuneCells(results, r, driftRatio)[0];
      expect(drift.get(shortOf(r)), `drift-vs-steps.svg, ${r.label}`).toEqual(first.drift.map((d) => [d.step, d.l2]));
    }
    const rhos = [...new Set([preset.rho, ...preset.sweep])].sort((a, b) => a - b);
    const sweep = chart("rho-sweep.svg");
    expect(sweep.get("harmful score")).toEqual(rhos.map((rho) => [rho, gridPoint(results, vaccine(rho), preset.sweepRatio).hs]));
    expect(sweep.get("fine-tune accuracy")).toEqual(rhos.map((rho) => [rho, gridPoint(results, vaccine(rho), preset.sweepRatio).fa]));
  });

  it("the README's experiment section states only numbers of this run", () => {
    const section = experimentSection();
    // Its table is the report's Table 1 (the README names the first column differently).
    const readmeTable = section.split("\n").filter((l) => l.startsWith("|"));
    expect(readmeTable.slice(1)).toEqual(table1Lines(report).slice(1));
    // Machine and time as the report gives them.
    const measured = /Measured on (.+) in ([\d.]+) minutes/.exec(report);
    expect(measured, "report.md has its machine and time").not.toBeNull();
    expect(section).toContain(measured![1]);
    expect(section).toContain(`${measured![2]} minutes`);
    // Every decimal number of the prose is printed by the report, or follows from
    // results.json or the presets in one stated step.
    const allowed = new Set(report.match(/\d+\.\d+/g));
    const cells = Object.values(results.cells);
    allowed.add((cells.reduce((s, c) => s + ("seconds" in c ? c.seconds : 0), 0) / 60).toFixed(1));
    for (const c of cells) if (c.kind === "align") allowed.add(c.harmfulScore.toFixed(1));
    const norm = (results.cells["norm/seed0"] as NormResult).attentionNorm;
    for (const preset of [PRESETS.quick, PRESETS.full]) {
      for (const x of [...preset.ratios, preset.rho, ...preset.sweep]) allowed.add(String(x));
      // rho as a percentage of the attention-output norm.
      for (const rho of [preset.rho, ...preset.sweep]) allowed.add(((100 * rho) / norm).toFixed(1));
    }
    const prose = section
      .replace(/\]\([^)]*\)/g, "]") // link targets
      .replace(/`[^`]*`/g, "") // commands and file names
      .replace(/\bv\d+(\.\d+)+/g, ""); // the Node version, checked above
    const unbacked = (prose.match(/\d+\.\d+/g) ?? []).filter((x) => !allowed.has(x));
    expect(unbacked, "numbers in the README's experiment section that no recorded file backs").toEqual([]);
  });
});
