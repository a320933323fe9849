/**
 * The fine-tuning guards (docs/defences.md#fine-tuning-guards) as trainAdapter applies them:
 * safety mixing changes the data, Lisa wraps the step function and adds a second data set.
 */
import { safetyMix } from "../data/safety-mix.ts";
import type { Example } from "../data/template.ts";
import { LisaStep } from "../train/lisa.ts";
import type { StepFunction } from "../train/step.ts";

export type FineTuneGuard =
  | { kind: "lisa"; alignmentSteps: number; userSteps: number; rho: number; alignmentData: Example[] }
  | { kind: "safety_mix"; fraction: number; alignmentData: Example[] };

/** The data and step function of a guarded run, and the guard as the run's plan records it (settings and sizes, not the examples). */
export function applyGuard(
  guard: FineTuneGuard | undefined,
  data: Example[],
  stepFn: StepFunction,
  seed: number,
): { data: Example[]; stepFn: StepFunction; plan?: Record<string, unknown> } {
  if (!guard) return { data, stepFn };
  const { alignmentData, ...settings } = guard;
  const plan = { ...settings, alignmentExamples: alignmentData.length };
  if (guard.kind === "safety_mix") return { data: safetyMix(data, alignmentData, guard.fraction, seed), stepFn, plan };
  return { data, stepFn: new LisaStep(stepFn, guard, alignmentData, data), plan };
}
