/**
 * The fine-tuning guards (docs/defences.md#fine-tuning-guards) as trainAdapter applies them:
 * safety mixing changes the data, Lisa wraps the step function (StepRecipe.lisa) and adds a
 * second data set.
 */
import { safetyMix } from "../data/safety-mix.ts";
import type { Example } from "../data/template.ts";
import type { LisaRecipe } from "./alignment-methods.ts";

export type FineTuneGuard =
  | { kind: "lisa"; alignmentSteps: number; userSteps: number; rho: number; alignmentData: Example[] }
  | { kind: "safety_mix"; fraction: number; alignmentData: Example[] };

/** The data of a guarded run, Lisa's part of its step (StepRecipe.lisa), and the guard as the run's plan records it (settings and sizes, not the examples). */
export function applyGuard(guard: FineTuneGuard | undefined, data: Example[], seed: number): { data: Example[]; lisa?: LisaRecipe; plan?: Record<string, unknown> } {
  if (!guard) return { data };
  const { alignmentData, ...settings } = guard;
  const plan = { ...settings, alignmentExamples: alignmentData.length };
  if (guard.kind === "safety_mix") return { data: safetyMix(data, alignmentData, guard.fraction, seed), plan };
  const { alignmentSteps, userSteps, rho } = guard;
  return { data, lisa: { options: { alignmentSteps, userSteps, rho }, data: { alignment: alignmentData, user: data } }, plan };
}
