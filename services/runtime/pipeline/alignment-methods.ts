/**
 * The alignment methods (AlignSpec.method) as the runtime runs them: each one's settings
 * with every default already applied, and the step function that implements it
 * (docs/method.md for SFT and Vaccine, docs/defences.md for the others), made from plain
 * data (StepRecipe) so that every thread of a data-parallel run makes the same.
 */
import { BoosterStep } from "../train/booster-step.ts";
import { HarmfulBatches, type EncodedHarmful } from "../train/harmful-batches.ts";
import { LisaStep, type LisaData, type LisaOptions } from "../train/lisa.ts";
import { RepNoiseStep } from "../train/repnoise-step.ts";
import { SftStep, type StepFunction } from "../train/step.ts";
import { TVaccineStep } from "../train/t-vaccine-step.ts";
import { VaccineStep, type Rho } from "../train/vaccine-step.ts";

export type AlignmentMethod =
  | { kind: "sft" }
  | { kind: "vaccine"; rho: Rho; refreshEvery: number }
  | { kind: "t_vaccine"; rho: number; layers: number; resampleEvery: number; probeEvery: number }
  | { kind: "booster"; lambda: number; alpha: number }
  | { kind: "repnoise"; alpha: number; beta: number };

/** Whether the method reads harmful data besides the training data (T-Vaccine's probe, Booster, RepNoise). */
export function needsHarmfulData(method: AlignmentMethod): boolean {
  return method.kind === "t_vaccine" || method.kind === "booster" || method.kind === "repnoise";
}

/**
 * What a run's step function is made from, as plain data: the threads of a data-parallel run
 * (train/data-parallel.ts) each make theirs from the recipe the run's own came from.
 */
export interface StepRecipe {
  method: AlignmentMethod;
  /** The run's seed (T-Vaccine's draws, RepNoise's noise). */
  seed: number;
  /** The harmful data tokenized, for the methods that read it. */
  harmful?: EncodedHarmful;
  /** A Lisa guard around the method's step (fine-tune-guards.ts). */
  lisa?: LisaRecipe;
}

export interface LisaRecipe {
  options: LisaOptions;
  /** The alignment and the user's data (only the run's own step chooses batches: a data-parallel thread's needs none). */
  data?: LisaData;
}

export function stepFunction({ method, seed, harmful, lisa }: StepRecipe): StepFunction {
  const inner = methodStep(method, seed, harmful);
  return lisa ? new LisaStep(inner, lisa.options, lisa.data) : inner;
}

function methodStep(method: AlignmentMethod, seed: number, harmful?: EncodedHarmful): StepFunction {
  const batches = () => {
    if (!harmful) throw new RangeError(`the ${method.kind} method needs a harmful dataset`);
    return new HarmfulBatches(harmful);
  };
  switch (method.kind) {
    case "sft":
      return new SftStep();
    case "vaccine":
      return new VaccineStep(method.rho, method.refreshEvery);
    case "t_vaccine":
      return new TVaccineStep({ ...method, seed }, batches());
    case "booster":
      return new BoosterStep({ lambda: method.lambda, alpha: method.alpha }, batches());
    case "repnoise":
      return new RepNoiseStep({ alpha: method.alpha, beta: method.beta, seed }, batches());
  }
}
