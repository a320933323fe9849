// The experiment end to end through the real services, on a reduced grid (preset "tiny")
// and a tiny model over the built-in world's vocabulary: every cell measured, fine-tuning
// scored along its training states, a relative-rho alignment, a report whose numbers are
// results.json's, well-formed charts, and a rerun that resumes instead of recomputing.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { worldVocabularyTexts } from "../../services/runtime/data/world/index.ts";
import { experiment } from "../../services/experiment/experiment.ts";
import { PRESETS, rowsOf, shortOf } from "../../services/experiment/presets.ts";
import type { AlignResult, BaseResult, FineTuneResult, Results } from "../../services/experiment/runner.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig } from "../../services/runtime/tokenizer.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { tinyConfig } from "../helpers/tiny-model.ts";
import { putTinyModeration } from "../helpers/tiny-moderation.ts";
import { putModel } from "../helpers/tiny-store.ts";
import { checkReport, curvePoints, gridPoint } from "./report-check.ts";
import { chartPoints, chartProblems } from "./svg-check.ts";

let suite: TestSuite;
let base: { uri: string; digest: string };
const out = mkdtempSync(join(tmpdir(), "vaccine-experiment-"));

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  // A tiny model and moderation classifier that speak the built-in world's vocabulary.
  const tokenizerJson = buildWordTokenizer(worldVocabularyTexts(0));
  const tokenizer = loadTokenizer(tokenizerJson, wordTokenizerConfig());
  const model = LlamaModel.init(tinyConfig({ vocab_size: tokenizer.vocabSize, max_position_embeddings: 256 }), 0, { initStd: 0.2 });
  base = await putModel(suite.deps.store, model, tokenizerJson);
  model.dispose();
  suite.deps.builtins.moderation = await putTinyModeration(suite.deps.store, tokenizerJson);
});
afterAll(async () => {
  await suite.close();
  rmSync(out, { recursive: true, force: true });
});

describe("vaccine experiment (tiny grid)", () => {
  it("runs every cell through the services, writes the report and charts, and resumes on a rerun", async () => {
    const preset = PRESETS.tiny;
    // Two cells at a time, as the CLI runs them on 2 cores (runCells orders them: run-cells.test.ts).
    const first = await experiment({ preset, out, address: suite.server.url, base, parallel: 2 });
    const results = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as Results;
    // norm + the base's scores (where non-aligned curves start) + 4 alignments (sft, vaccine
    // rho 0.5, vaccine rho 1, vaccine rho_relative 0.05) + 3 rows x 2 ratios + 2 sweep runs.
    expect(Object.keys(results.cells).sort()).toEqual(
      [
        "norm/seed0",
        "base/seed0",
        "align/sft/seed0",
        "align/vaccine-rho0.5/seed0",
        "align/vaccine-rho1/seed0",
        "align/vaccine-rel0.05/seed0",
        ...[0, 0.2].flatMap((p) => [`finetune/none/p${p}/seed0`, `finetune/sft/p${p}/seed0`, `finetune/vaccine-rho0.5/p${p}/seed0`]),
        "finetune/vaccine-rho1/p0.1/seed0",
        "finetune/vaccine-rel0.05/p0.1/seed0",
      ].sort(),
    );
    for (const [id, cell] of Object.entries(results.cells)) {
      if (cell.kind !== "finetune") continue;
      const ft = cell as FineTuneResult;
      expect([id, Number.isFinite(ft.harmfulScore), Number.isFinite(ft.accuracy)]).toEqual([id, true, true]);
      expect(ft.drift.map((d) => d.step)).toEqual([2, 4]);
      expect(ft.drift.every((d) => Number.isFinite(d.l2) && d.l2 > 0)).toBe(true);
      // The curve: the starting model's scores at step 0 (its own cell), the training state
      // at step 2 scored here, and the end: the run's own final scores.
      const parent = results.cells[id.startsWith("finetune/none/") ? "base/seed0" : id.replace(/^finetune\/([^/]+)\/p[^/]+\//, "align/$1/")] as AlignResult | BaseResult;
      expect(ft.curve!.map((pt) => pt.step), id).toEqual([0, 2, 4]);
      expect(ft.curve![0], id).toEqual({ step: 0, harmfulScore: parent.harmfulScore, refusalRate: parent.classes!.refusalRate, otherRate: parent.classes!.otherRate, degenerate: parent.classes!.degenerate });
      expect(ft.curve![2], id).toEqual({ step: 4, harmfulScore: ft.harmfulScore, refusalRate: ft.classes!.refusalRate, otherRate: ft.classes!.otherRate, degenerate: ft.classes!.degenerate });
      const mid = ft.curve![1];
      expect([mid.harmfulScore, mid.refusalRate! + mid.otherRate!].every((x) => x >= 0 && x <= 100), id).toBe(true);
    }
    // rho_relative reached the job: its result records the norm it measured and the rho it used.
    const rel = results.cells["align/vaccine-rel0.05/seed0"] as AlignResult;
    const meta = (await suite.deps.store.readManifest(rel.ref)).meta as { vaccine?: { rho_relative: number; attention_norm: number; rho: number } };
    expect(meta.vaccine?.rho_relative).toBe(0.05);
    expect(meta.vaccine!.attention_norm).toBeGreaterThan(0);
    expect(meta.vaccine!.rho).toBeCloseTo(0.05 * meta.vaccine!.attention_norm, 10);
    // The report: every number it prints is the one results.json holds (Table 1 cell by
    // cell, alignment cost, rho sweep, drift, readings), it is the file on disk, and it
    // gives this run's time.
    expect(readFileSync(join(out, "report.md"), "utf8")).toBe(first.report);
    checkReport(first.report, results);
    expect(first.report).toContain(`in ${(first.seconds / 60).toFixed(1)} minutes of this run`);
    // The charts: well-formed SVG, and the harmful-score charts plot the tables' numbers.
    const charts = ["hs-vs-p.svg", "drift-vs-steps.svg", "rho-sweep.svg", ...preset.ratios.map((p) => `hs-vs-step-p${p}.svg`)];
    for (const chart of charts) {
      expect(existsSync(join(out, chart)), chart).toBe(true);
      expect(chartProblems(readFileSync(join(out, chart), "utf8")), chart).toEqual([]);
    }
    const plotted = chartPoints(readFileSync(join(out, "hs-vs-p.svg"), "utf8"));
    for (const r of rowsOf(preset)) {
      expect(plotted.get(shortOf(r))).toEqual(preset.ratios.map((p) => [p, gridPoint(results, r, p).hs]));
    }
    for (const p of preset.ratios) {
      const curves = chartPoints(readFileSync(join(out, `hs-vs-step-p${p}.svg`), "utf8"));
      for (const r of rowsOf(preset)) expect(curves.get(shortOf(r)), `hs-vs-step-p${p}.svg, ${r.label}`).toEqual(curvePoints(results, r, p));
    }

    // A rerun reuses every cell: no new alignment job is created.
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: suite.server.url }));
    const before = (await align.listAlignJobs({ pageSize: 100 })).jobs.length;
    await experiment({ preset, out, address: suite.server.url, base });
    expect((await align.listAlignJobs({ pageSize: 100 })).jobs.length).toBe(before);
    expect(JSON.parse(readFileSync(join(out, "results.json"), "utf8")).cells).toEqual(results.cells);
  }, 300_000); // every cell trains and scores (refusal model and perplexity too): minutes on a loaded machine
});
