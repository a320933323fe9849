/**
 * Experiment presets: the paper's protocol (docs/method.md#evaluation) at the built-in world's
 * scale. Small models need their own settings (the reference's are for 7B); these were
 * calibrated on the shipped base model: see the README's experiment section.
 */
export interface Preset {
  name: "quick" | "full" | "tiny";
  seeds: number[];
  /** Harmful ratios p of the fine-tuning mix. */
  ratios: number[];
  /** The Vaccine rho of the main comparison. */
  rho: number;
  /** rho sweep, at p = sweepRatio. */
  sweep: number[];
  sweepRatio: number;
  align: { size: number; steps: number; learningRate: number; batchSize: number };
  finetune: { task: "sst2" | "agnews" | "gsm8k"; size: number; steps: number; learningRate: number; batchSize: number; checkpointEvery: number };
  lora: { rank: number; alpha: number; dropout: number };
  eval: { harmfulPrompts: number; taskExamples: number; maxNewTokens: number; probeSize: number };
}

const COMMON = {
  // Calibrated on the shipped base model: a batch of 8 alignment examples has attention
  // outputs of global norm about 14.7; rho 0.5 (about 3% of it) lets alignment teach refusals
  // in a short run (tests/runtime/alignment.test.ts).
  rho: 0.5,
  sweepRatio: 0.1,
  lora: { rank: 8, alpha: 16, dropout: 0 },
} as const;

export const PRESETS: Record<Preset["name"], Preset> = {
  // For tests: every cell of the grid, at sizes that take seconds.
  tiny: {
    ...COMMON,
    name: "tiny",
    seeds: [0],
    ratios: [0, 0.2],
    sweep: [1],
    align: { size: 40, steps: 4, learningRate: 1e-2, batchSize: 4 },
    finetune: { task: "sst2", size: 40, steps: 4, learningRate: 1e-2, batchSize: 4, checkpointEvery: 2 },
    eval: { harmfulPrompts: 4, taskExamples: 4, maxNewTokens: 8, probeSize: 4 },
  },
  quick: {
    ...COMMON,
    name: "quick",
    seeds: [0],
    ratios: [0, 0.05, 0.1, 0.2],
    sweep: [0.25, 2],
    align: { size: 1000, steps: 150, learningRate: 3e-3, batchSize: 8 },
    finetune: { task: "sst2", size: 1000, steps: 150, learningRate: 1e-3, batchSize: 8, checkpointEvery: 50 },
    eval: { harmfulPrompts: 60, taskExamples: 60, maxNewTokens: 48, probeSize: 32 },
  },
  full: {
    ...COMMON,
    name: "full",
    seeds: [0, 1, 2],
    ratios: [0, 0.01, 0.05, 0.1, 0.2],
    sweep: [0.1, 0.25, 1, 2, 5],
    align: { size: 2000, steps: 500, learningRate: 3e-3, batchSize: 8 },
    finetune: { task: "sst2", size: 1000, steps: 400, learningRate: 1e-3, batchSize: 8, checkpointEvery: 50 },
    eval: { harmfulPrompts: 200, taskExamples: 200, maxNewTokens: 128, probeSize: 100 },
  },
};
