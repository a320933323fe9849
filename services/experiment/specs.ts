/**
 * A row's choices as the contract's messages: AlignSpec.method and FineTuneSpec.guard. Settings
 * a row leaves out are left unset, so the service applies the contract's defaults.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AlignSpecSchema, FineTuneSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import type { AlignChoice, GuardChoice } from "./presets.ts";

type AlignMethodInit = NonNullable<MessageInitShape<typeof AlignSpecSchema>["method"]>;
type GuardInit = NonNullable<MessageInitShape<typeof FineTuneSpecSchema>["guard"]>;

export function alignMethod(a: AlignChoice): AlignMethodInit {
  switch (a.method) {
    case "sft":
      return { case: "sft", value: {} };
    case "vaccine":
      return { case: "vaccine", value: "rhoRelative" in a ? { rhoRelative: a.rhoRelative } : { rho: a.rho, refreshEvery: a.refreshEvery } };
    case "t_vaccine":
      return { case: "tVaccine", value: { rho: a.rho, layers: a.layers } };
    case "booster":
      return { case: "booster", value: { lambda: a.lambda, alpha: a.alpha } };
    case "repnoise":
      return { case: "repnoise", value: {} };
  }
}

export function guardOf(g: GuardChoice): GuardInit {
  switch (g.guard) {
    case "lisa":
      return { case: "lisa", value: { alignmentSteps: g.alignmentSteps, userSteps: g.userSteps } };
    case "safety_mix":
      return { case: "safetyMix", value: { fraction: g.fraction } };
  }
}
