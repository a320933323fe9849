// The committed runs (results/quick, results/full) and the README's account of them: each
// report.md and its charts agree with its results.json, and every number the README's
// experiment section states comes from them. It only reads files: no training.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PRESETS, rowsOf, shortOf } from "../../services/experiment/presets.ts";
import type { NormResult, Results } from "../../services/experiment/runner.ts";
import { checkReport, fineTuneCells, gridPoint, table1Lines, vaccine } from "./report-check.ts";
import { chartPoints, chartProblems } from "./svg-check.ts";

const RUNS = ["quick", "full"] as const;
const recorded = Object.fromEntries(
  RUNS.map((name) => {
    const dir = `results/${name}`;
    return [name, { dir, results: JSON.parse(readFileSync(join(dir, "results.json"), "utf8")) as Results, report: readFileSync(join(dir, "report.md"), "utf8") }];
  }),
) as Record<(typeof RUNS)[number], { dir: string; results: Results; report: string }>;
const readme = readFileSync("README.md", "utf8");

/** The README's "## The experiment" section, up to the next section. */
function experimentSection(): string {
  const parts = readme.split("\n## The experiment\n");
  expect(parts.length, 'README.md has one "## The experiment" section').toBe(2);
  return parts[1].split("\n## ")[0];
}

/** A report's machine and minutes ("Measured on <machine> in <minutes> minutes"). */
function measuredOn(report: string): [string, string] {
  const measured = /Measured on (.+) in ([\d.]+) minutes/.exec(report);
  expect(measured, "report.md has its machine and time").not.toBeNull();
  return [measured![1], measured![2]];
}

for (const name of RUNS) {
  const { dir, results, report } = recorded[name];
  describe(`the recorded ${name} run (${dir})`, () => {
    it(`was made with the ${name} preset as it stands`, () => {
      expect(results.preset).toEqual(PRESETS[name]);
    });

    it("report.md prints exactly the numbers of results.json", () => {
      checkReport(report, results);
    });

    it("its charts are well-formed SVG plotting results.json", () => {
      const { preset } = results;
      const chart = (file: string) => {
        const src = readFileSync(join(dir, file), "utf8");
        expect(chartProblems(src), file).toEqual([]);
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
      // Both sweeps on one rho axis: a rho_relative point at rho_relative x the mean norm.
      const norms = preset.seeds.map((s) => (results.cells[`norm/seed${s}`] as NormResult).attentionNorm);
      const norm = norms.reduce((a, b) => a + b, 0) / norms.length;
      const points = [
        ...[...new Set([preset.rho, ...preset.sweep])].map((rho) => ({ rho, g: gridPoint(results, vaccine(rho), preset.sweepRatio) })),
        ...(preset.relativeSweep ?? []).map((rel) => ({ rho: rel * norm, g: gridPoint(results, { label: "", align: { method: "vaccine", rhoRelative: rel } }, preset.sweepRatio) })),
      ].sort((a, b) => a.rho - b.rho);
      expect(points.length).toBe(1 + preset.sweep.length + (preset.relativeSweep?.length ?? 0));
      const sweep = chart("rho-sweep.svg");
      expect(sweep.get("harmful score")).toEqual(points.map(({ rho, g }) => [rho, g.hs]));
      expect(sweep.get("fine-tune accuracy")).toEqual(points.map(({ rho, g }) => [rho, g.fa]));
    });
  });
}

describe("the README's experiment section", () => {
  it("states only numbers of the recorded runs", () => {
    const section = experimentSection();
    // Its first table is the quick run's Table 1 (the README names the first column differently).
    const quick = recorded.quick;
    const readmeTable = section.split("\n").filter((l) => l.startsWith("|"));
    expect(readmeTable.slice(1, table1Lines(quick.report).length)).toEqual(table1Lines(quick.report).slice(1));
    // Every decimal number of the prose is printed by a report, or follows from its
    // results.json or the presets in one stated step; machines and times as the reports give them.
    const allowed = new Set<string>();
    for (const { results, report } of Object.values(recorded)) {
      const [machine, minutes] = measuredOn(report);
      expect(section).toContain(machine);
      expect(section).toContain(`${minutes} minutes`);
      for (const x of report.match(/\d+\.\d+/g) ?? []) allowed.add(x);
      const cells = Object.values(results.cells);
      allowed.add((cells.reduce((s, c) => s + ("seconds" in c ? c.seconds : 0), 0) / 60).toFixed(1));
      for (const c of cells) if (c.kind === "align") allowed.add(c.harmfulScore.toFixed(1));
      const norm = (results.cells["norm/seed0"] as NormResult).attentionNorm;
      for (const preset of [PRESETS.quick, PRESETS.full]) {
        for (const x of [...preset.ratios, preset.rho, ...preset.sweep]) allowed.add(String(x));
        // rho as a percentage of the attention-output norm.
        for (const rho of [preset.rho, ...preset.sweep]) allowed.add(((100 * rho) / norm).toFixed(1));
      }
    }
    const prose = section
      .replace(/\]\([^)]*\)/g, "]") // link targets
      .replace(/`[^`]*`/g, "") // commands and file names
      .replace(/\bv\d+(\.\d+)+/g, ""); // the Node version, checked above
    const unbacked = (prose.match(/\d+\.\d+/g) ?? []).filter((x) => !allowed.has(x));
    expect(unbacked, "numbers in the README's experiment section that no recorded file backs").toEqual([]);
  });
});
