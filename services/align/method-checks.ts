/** Request checks of AlignSpec.method: each method's fields against the bounds its proto comment states. */
import type { DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import type { AlignSpec } from "../../gen/vaccine/v1/training_pb.ts";
import { checkDatasetRef } from "../common/validate-refs.ts";
import type { RequestValidator } from "../platform/validate.ts";

/** Bound on the step periods (resample_every, probe_every): beyond any run the step bounds allow. */
export const MAX_PERIOD = 1_000_000;
/** Bound on Vaccine's rho_relative: a perturbation as large as the activations it perturbs. */
export const MAX_RHO_RELATIVE = 1;
/** Bound on T-Vaccine's layers; the runtime caps it at the model's depth. */
export const MAX_LAYERS = 4096;

export function checkAlignMethod(v: RequestValidator, method: AlignSpec["method"]): void {
  switch (method.case) {
    case undefined:
      v.fail("spec.method", "needs sft, vaccine, t_vaccine, booster or repnoise");
      return;
    case "vaccine":
      v.number("spec.vaccine.rho", method.value.rho, { min: 0 });
      v.number("spec.vaccine.rho_relative", method.value.rhoRelative, { min: 0, max: MAX_RHO_RELATIVE });
      if (method.value.rho !== undefined && method.value.rhoRelative !== undefined) v.fail("spec.vaccine.rho_relative", "cannot be set together with rho");
      v.number("spec.vaccine.refresh_every", method.value.refreshEvery, { min: 1, integer: true });
      return;
    case "tVaccine": {
      const m = method.value;
      v.number("spec.t_vaccine.rho", m.rho, { min: 0 });
      v.number("spec.t_vaccine.layers", m.layers, { min: 1, max: MAX_LAYERS, integer: true });
      v.number("spec.t_vaccine.resample_every", m.resampleEvery, { min: 1, max: MAX_PERIOD, integer: true });
      v.number("spec.t_vaccine.probe_every", m.probeEvery, { min: 1, max: MAX_PERIOD, integer: true });
      checkHarmful(v, "spec.t_vaccine.probe_dataset", m.probeDataset);
      return;
    }
    case "booster":
      v.number("spec.booster.lambda", method.value.lambda, { min: 0 });
      v.number("spec.booster.alpha", method.value.alpha, { min: 0 });
      checkHarmful(v, "spec.booster.harmful_dataset", method.value.harmfulDataset);
      return;
    case "repnoise":
      v.number("spec.repnoise.alpha", method.value.alpha, { min: 0 });
      v.number("spec.repnoise.beta", method.value.beta, { min: 0 });
      checkHarmful(v, "spec.repnoise.harmful_dataset", method.value.harmfulDataset);
      return;
  }
}

/** Unset means the built-in harmful set; a message that is set must name a source. */
function checkHarmful(v: RequestValidator, field: string, ref: DatasetRef | undefined): void {
  if (ref) checkDatasetRef(v, field, ref);
}
