/**
 * Experiment presets: the paper's protocol (docs/method.md#evaluation) at the built-in world's
 * scale. Small models need their own settings (the reference's are for 7B); these were
 * calibrated on the shipped base model: see the README's experiment section.
 */

/**
 * An alignment method of AlignSpec.method, named by its oneof member in the contract
 * (proto/vaccine/v1/training.proto), with the settings the experiment varies; the rest keep
 * the contract's defaults. Vaccine takes rho absolute or relative (VaccineMethod.rho_relative:
 * a fraction of the attention-output norm of the first alignment batch).
 */
export type AlignChoice =
  | { method: "sft" }
  | { method: "vaccine"; rho: number; refreshEvery?: number }
  | { method: "vaccine"; rhoRelative: number }
  | { method: "t_vaccine"; rho?: number; layers?: number }
  | { method: "booster"; lambda?: number; alpha?: number }
  | { method: "repnoise" };

/** A fine-tuning guard of FineTuneSpec.guard, named by its oneof member. */
export type GuardChoice = { guard: "lisa"; alignmentSteps: number; userSteps: number } | { guard: "safety_mix"; fraction: number };

/** One row of the tables: an alignment (none: the base model) and an optional fine-tuning guard. */
export interface RowSpec {
  label: string;
  /** Its name in charts, the drift table and the reading's protection lines; default `label`. */
  short?: string;
  align?: AlignChoice;
  guard?: GuardChoice;
}

export interface Preset {
  name: "quick" | "full" | "tiny";
  seeds: number[];
  /** Harmful ratios p of the fine-tuning mix. */
  ratios: number[];
  /** The Vaccine rho of the main comparison (absolute: the norm of the perturbation). */
  rho: number;
  /** rho sweep, at p = sweepRatio. */
  sweep: number[];
  sweepRatio: number;
  align: { size: number; steps: number; learningRate: number; batchSize: number };
  finetune: { task: "sst2" | "agnews" | "agnews-hard" | "gsm8k" | "gsm8k-hard"; size: number; steps: number; learningRate: number; batchSize: number; checkpointEvery: number };
  lora: { rank: number; alpha: number; dropout: number };
  eval: { harmfulPrompts: number; taskExamples: number; maxNewTokens: number; probeSize: number };
  // The protocol of #19 (docs/method.md#experiment-protocol). Absent, a preset runs the paper's
  // three rows, scores only the end of fine-tuning and has no relative sweep.
  /** The table's rows; absent: Non-aligned, SFT and Vaccine at `rho` (the paper's Table 1). */
  rows?: RowSpec[];
  /** Vaccine rho_relative values run at p = sweepRatio (fractions of the attention-output norm). */
  relativeSweep?: number[];
  /**
   * Score harmfulness at every training state whose step is a multiple of this (a multiple of
   * finetune.checkpointEvery), besides the start and the end of fine-tuning: the curve that
   * steps-to-break reads. Absent: the end only.
   */
  scoreEvery?: number;
}

/** A row's key in cell ids: the alignment's (or "none"), then the guard's. */
export function alignKey(a: AlignChoice): string {
  switch (a.method) {
    case "vaccine":
      return "rhoRelative" in a ? `vaccine-rel${a.rhoRelative}` : `vaccine-rho${a.rho}${a.refreshEvery ? `-tau${a.refreshEvery}` : ""}`;
    case "t_vaccine":
      return `t_vaccine${a.rho !== undefined ? `-rho${a.rho}` : ""}${a.layers !== undefined ? `-l${a.layers}` : ""}`;
    case "booster":
      return `booster${a.lambda !== undefined ? `-lambda${a.lambda}` : ""}${a.alpha !== undefined ? `-alpha${a.alpha}` : ""}`;
    default:
      return a.method;
  }
}
export const rowKey = (r: RowSpec): string => `${r.align ? alignKey(r.align) : "none"}${r.guard ? `+${r.guard.guard}` : ""}`;

/** The rows of a preset's tables (the paper's three unless it names its own). */
export const rowsOf = (preset: Preset): RowSpec[] =>
  preset.rows ?? [{ label: "Non-aligned" }, { label: "SFT", align: { method: "sft" } }, { label: `Vaccine (rho ${preset.rho})`, short: "Vaccine", align: { method: "vaccine", rho: preset.rho } }];
export const shortOf = (r: RowSpec): string => r.short ?? r.label;

const COMMON = {
  // Calibrated on the shipped base model: a batch of 8 alignment examples has attention
  // outputs of global norm about 14.7; rho 0.5 (about 3% of it) lets alignment teach refusals
  // in a short run (tests/runtime/alignment.test.ts).
  rho: 0.5,
  sweepRatio: 0.1,
  lora: { rank: 8, alpha: 16, dropout: 0 },
} as const;

export const PRESETS: Record<Preset["name"], Preset> = {
  // For tests: every cell of the grid, at sizes that take seconds; fine-tuning scored at its
  // two training states (steps 2 and 4) besides its start, and one relative-rho alignment.
  tiny: {
    ...COMMON,
    name: "tiny",
    seeds: [0],
    ratios: [0, 0.2],
    sweep: [1],
    align: { size: 40, steps: 4, learningRate: 1e-2, batchSize: 4 },
    finetune: { task: "sst2", size: 40, steps: 4, learningRate: 1e-2, batchSize: 4, checkpointEvery: 2 },
    eval: { harmfulPrompts: 4, taskExamples: 4, maxNewTokens: 8, probeSize: 4 },
    relativeSweep: [0.05],
    scoreEvery: 2,
  },
  // The protocol at the size of one sitting (1.3-3.3 minutes on 2 cores, two cells at a time,
  // results/quick): the paper's three rows with the study's protective rho 2 (about 14% of the
  // attention-output norm), three seeds, p = 0, 0.01 and 0.05, harmfulness every 50 of 200
  // fine-tuning steps, and rho_relative at a quarter and twice that fraction at p = 0.01. The
  // task is agnews-hard, which the base model learns only partly in a short run (about 50%
  // after 150 steps), so that a defence's accuracy cost can show.
  quick: {
    ...COMMON,
    name: "quick",
    rho: 2,
    seeds: [0, 1, 2],
    ratios: [0, 0.01, 0.05],
    sweep: [],
    sweepRatio: 0.01,
    align: { size: 1000, steps: 150, learningRate: 3e-3, batchSize: 8 },
    finetune: { task: "agnews-hard", size: 1000, steps: 200, learningRate: 1e-3, batchSize: 8, checkpointEvery: 50 },
    eval: { harmfulPrompts: 40, taskExamples: 40, maxNewTokens: 32, probeSize: 32 },
    relativeSweep: [0.035, 0.27],
    scoreEvery: 50,
  },
  // The protocol of #19 at the settings of its small-scale study (alignment 150 steps at lr
  // 3e-3; fine-tuning 300 steps at lr 1e-3; 40 held-out harmful prompts, 32 new
  // tokens): six ratios from p = 0.01, three seeds, every alignment method and fine-tuning guard
  // the service offers, harmfulness scored every 25 fine-tuning steps, and a sweep of
  // rho_relative at p = 0.01, where that study saw Vaccine's effect. The task is agnews-hard
  // (92% after 300 steps, bench/results/hard-task.json): SST2's 100% would hide a defence's
  // cost, and gsm8k-hard's 0-2% as surely.
  //
  // Run time: 195 fine-tunings (10 rows x 6 ratios + 5 sweep points, x 3 seeds) of 300 steps
  // with 12 scores and drifts each, and 36 alignments: 11.8-18.6 minutes on 2 cores, two cells at a
  // time (results/full, native kernels). Finished cells are kept in results.json, so it can
  // run in pieces.
  full: {
    ...COMMON,
    name: "full",
    rho: 2,
    seeds: [0, 1, 2],
    ratios: [0, 0.01, 0.02, 0.05, 0.1, 0.2],
    sweep: [],
    sweepRatio: 0.01,
    align: { size: 1000, steps: 150, learningRate: 3e-3, batchSize: 8 },
    finetune: { task: "agnews-hard", size: 1000, steps: 300, learningRate: 1e-3, batchSize: 8, checkpointEvery: 25 },
    eval: { harmfulPrompts: 40, taskExamples: 40, maxNewTokens: 32, probeSize: 32 },
    rows: [
      { label: "Non-aligned" },
      { label: "SFT", align: { method: "sft" } },
      // About 3% and 14% of the attention-output norm of a batch (14.7): the calibrated value
      // and the study's protective one.
      { label: "Vaccine (rho 0.5)", align: { method: "vaccine", rho: 0.5 } },
      { label: "Vaccine (rho 2)", align: { method: "vaccine", rho: 2 } },
      { label: "Accelerated Vaccine (rho 2, tau 10)", align: { method: "vaccine", rho: 2, refreshEvery: 10 } },
      // One of the two layers per period: with all layers drawn T-Vaccine is Vaccine.
      { label: "T-Vaccine (rho 2, 1 layer)", align: { method: "t_vaccine", rho: 2, layers: 1 } },
      { label: "Booster", align: { method: "booster" } },
      { label: "RepNoise", align: { method: "repnoise" } },
      // Lisa's 1:9 split of the paper (100 / 900 steps), three cycles in 300 steps.
      { label: "SFT + Lisa (10 / 90)", align: { method: "sft" }, guard: { guard: "lisa", alignmentSteps: 10, userSteps: 90 } },
      { label: "SFT + safety mix (0.1)", align: { method: "sft" }, guard: { guard: "safety_mix", fraction: 0.1 } },
    ],
    // From 3.5% (about the calibrated 0.5) to half the norm (the earlier study's protective
    // value in its world); 27% is the absolute rho 4 that degenerated in #20.
    relativeSweep: [0.035, 0.07, 0.14, 0.27, 0.5],
    scoreEvery: 25,
  },
};
