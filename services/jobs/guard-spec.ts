/**
 * FineTuneSpec.guard to the runtime's FineTuneGuard, with the defaults the contract documents
 * (docs/defences.md#fine-tuning-guards): unset fields take the paper's values and an unset
 * alignment_dataset the built-in alignment set.
 */
import type { FineTuneSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { datasetSource } from "../common/refs.ts";
import { resolveExamples, type DatasetSource } from "../runtime/pipeline/datasets.ts";
import type { FineTuneGuard } from "../runtime/pipeline/fine-tune-guards.ts";
import type { CheckpointStore } from "../runtime/store/store.ts";

export const GUARD_DEFAULTS = {
  lisa: { alignmentSteps: 100, userSteps: 900, rho: 1 },
  safetyMix: { fraction: 0.1 },
  alignmentDataset: "alignment",
} as const;

/** The guard's alignment dataset (the built-in set when unset) and its request field; undefined without a guard. */
export function guardDataset(spec: FineTuneSpec): { field: string; source: DatasetSource } | undefined {
  const g = spec.guard;
  if (g.case === undefined) return undefined;
  const ref = g.value.alignmentDataset;
  return {
    field: `spec.${g.case === "lisa" ? "lisa" : "safety_mix"}.alignment_dataset`,
    source: ref?.source.case ? datasetSource(ref) : { builtin: { name: GUARD_DEFAULTS.alignmentDataset } },
  };
}

/** The guard's settings with its alignment data read; undefined without a guard. */
export async function guardOf(store: CheckpointStore, spec: FineTuneSpec): Promise<FineTuneGuard | undefined> {
  const g = spec.guard;
  const dataset = guardDataset(spec);
  if (g.case === undefined || !dataset) return undefined;
  const alignmentData = await resolveExamples(store, dataset.source);
  if (g.case === "safetyMix") return { kind: "safety_mix", fraction: g.value.fraction ?? GUARD_DEFAULTS.safetyMix.fraction, alignmentData };
  const d = GUARD_DEFAULTS.lisa;
  return {
    kind: "lisa",
    alignmentSteps: g.value.alignmentSteps ?? d.alignmentSteps,
    userSteps: g.value.userSteps ?? d.userSteps,
    rho: g.value.rho ?? d.rho,
    alignmentData,
  };
}
