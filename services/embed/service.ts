import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { notImplemented } from "../platform/errors.ts";
import type { SuiteDeps } from "../platform/deps.ts";
import type { ServiceModule } from "../platform/server.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef } from "../platform/validate-training.ts";

/** Largest number of texts in one Embed call. */
export const MAX_EMBED_TEXTS = 256;

/** EmbedService: hidden states and harmful embedding drift. */
export function embedService(_deps: SuiteDeps): ServiceModule {
  return {
    desc: EmbedService,
    register(router) {
      router.service(EmbedService, {
        embed(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          v.count("texts", req.texts, { min: 1, max: MAX_EMBED_TEXTS });
          req.layers.forEach((l, i) => v.number(`layers[${i}]`, l, { min: 0 }));
          v.check();
          throw notImplemented(`${EmbedService.typeName}/Embed`);
        },
        computeDrift(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "reference", req.reference);
          checkCheckpointRef(v, "candidate", req.candidate);
          checkDatasetRef(v, "probe_dataset", req.probeDataset, false);
          v.number("probe_size", req.probeSize, { min: 1, max: 10_000, integer: true });
          v.check();
          throw notImplemented(`${EmbedService.typeName}/ComputeDrift`);
        },
      });
    },
  };
}
