/**
 * Booster's alignment over lambda and alpha on the built-in world (docs/defences.md#booster):
 * the full preset's alignment (1000 examples, 150 steps, lr 3e-3, batch 8, LoRA r 8 / alpha
 * 16, no dropout) at each setting and three seeds, SFT beside it, run through the experiment's
 * runner with the services in this process. Per setting, over the seeds: HS after alignment by
 * the moderation model and by the world's own label (the redaction marker), the moderation
 * model's agreement with that label, and the refusal rate. The runner's fine-tuning cells are
 * cut to two steps (p = 0): only the alignments are read. Writes bench/results/booster-sweep.json.
 * Run: npx tsx bench/booster-sweep.ts   (about 2 minutes on 2 cores)
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { experiment } from "../services/experiment/experiment.ts";
import { PRESETS, type AlignChoice, type Preset, type RowSpec } from "../services/experiment/presets.ts";
import { alignId, type AlignResult, type Results } from "../services/experiment/runner.ts";
import { mean } from "../services/experiment/seeds.ts";

/** [lambda, alpha]: the paper's 5 / 0.1, less of each, and lambda 0.1 to 1 at alpha 0.1. */
const SETTINGS: [number, number][] = [[0.1, 0.1], [0.3, 0.1], [1, 0.1], [5, 0.1], [5, 0.01], [5, 0.001]];

const full = PRESETS.full;
const aligns: { label: string; align: AlignChoice }[] = [
  { label: "SFT", align: { method: "sft" } },
  ...SETTINGS.map(([lambda, alpha]) => ({ label: `Booster (lambda ${lambda}, alpha ${alpha})`, align: { method: "booster", lambda, alpha } as const })),
];
const preset: Preset = {
  ...full,
  name: "tiny",
  ratios: [0],
  sweep: [],
  relativeSweep: undefined,
  scoreEvery: undefined,
  rows: aligns.map((a): RowSpec => ({ label: a.label, align: a.align })),
  finetune: { ...full.finetune, steps: 2, checkpointEvery: 2 },
};

const out = mkdtempSync(join(os.tmpdir(), "booster-sweep-"));
try {
  const { seconds } = await experiment({ preset, out, parallel: 2 });
  const results = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as Results;
  const rows = aligns.map(({ label, align }) => {
    const cells = preset.seeds.map((seed) => results.cells[alignId(align, seed)] as AlignResult);
    const of = (f: (c: AlignResult) => number) => ({ mean: mean(cells.map(f)), seeds: cells.map(f) });
    return {
      label,
      align,
      harmfulScore: of((c) => c.harmfulScore),
      worldHarmfulScore: of((c) => c.classes!.worldHarmfulScore!),
      worldAgreement: of((c) => c.classes!.worldAgreement!),
      refusalRate: of((c) => c.classes!.refusalRate),
      finalLoss: of((c) => c.finalLoss),
    };
  });
  const json = {
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? "unknown", node: process.version },
    date: new Date().toISOString(),
    seconds,
    setup: { align: preset.align, lora: preset.lora, seeds: preset.seeds, eval: preset.eval },
    rows,
  };
  writeFileSync("bench/results/booster-sweep.json", JSON.stringify(json, null, 2) + "\n");
  for (const r of rows) {
    console.log(`${r.label}: HS ${r.harmfulScore.mean.toFixed(1)}, by the marker ${r.worldHarmfulScore.mean.toFixed(1)} (agreement ${r.worldAgreement.mean.toFixed(1)}%), refusals ${r.refusalRate.mean.toFixed(1)}%`);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
