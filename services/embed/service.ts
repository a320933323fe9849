import { create } from "@bufbuild/protobuf";
import {
  ComputeDriftResponseSchema,
  EmbedResponseSchema,
  EmbedService,
  Pooling,
} from "../../gen/vaccine/v1/embed_pb.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { mapCallError, withCheckpoint } from "../common/checkpoint-calls.ts";
import type { ServiceModule } from "../platform/server.ts";
import { datasetSource } from "../common/refs.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef } from "../common/validate-refs.ts";
import { resolveExamples } from "../runtime/pipeline/datasets.ts";
import { computeDrift, DRIFT_DEFINITION } from "../runtime/pipeline/drift.ts";
import { hiddenStates, type Pooling as RuntimePooling } from "../runtime/pipeline/hidden-states.ts";

/** Largest number of texts in one Embed call. */
export const MAX_EMBED_TEXTS = 256;
/** Longest text, in tokens (also bounded by the model's positions). */
export const MAX_EMBED_TOKENS = 1024;
/** Default probe: a fixed sample of the built-in alignment data. */
export const DEFAULT_PROBE = { builtin: { name: "alignment", size: 100, seed: 0 } };

const POOLING: Record<Pooling, RuntimePooling> = {
  [Pooling.UNSPECIFIED]: "mean",
  [Pooling.MEAN]: "mean",
  [Pooling.LAST_TOKEN]: "last",
  [Pooling.NONE]: "none",
};

/** EmbedService: hidden states and harmful embedding drift. */
export function embedService(deps: SuiteDeps): ServiceModule {
  return {
    desc: EmbedService,
    register(router) {
      router.service(EmbedService, {
        async embed(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "checkpoint", req.checkpoint);
          v.count("texts", req.texts, { min: 1, max: MAX_EMBED_TEXTS });
          req.layers.forEach((l, i) => v.number(`layers[${i}]`, l, { min: 0 }));
          v.check();
          try {
            return await withCheckpoint(deps, "checkpoint", req.checkpoint, (loaded) => {
              const layers = req.layers.length ? req.layers : Array.from({ length: loaded.model.config.numHiddenLayers }, (_, i) => i);
              const states = hiddenStates(loaded, req.texts, { layers, final: req.includeFinalHidden, pooling: POOLING[req.pooling], maxTokens: MAX_EMBED_TOKENS });
              return create(EmbedResponseSchema, {
                hiddenSize: loaded.model.config.hiddenSize,
                embeddings: states.map((s) => ({
                  tokenCount: s.tokenCount,
                  layers: s.layers.map((l) => ({ layer: l.layer, vectors: { rows: l.vectors.rows, cols: l.vectors.cols, values: Array.from(l.vectors.values) } })),
                })),
              });
            });
          } catch (err) {
            mapCallError(err, "checkpoint");
          }
        },
        async computeDrift(req) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "reference", req.reference);
          checkCheckpointRef(v, "candidate", req.candidate);
          checkDatasetRef(v, "probe_dataset", req.probeDataset, false);
          v.number("probe_size", req.probeSize, { min: 1, max: 10_000, integer: true });
          v.check();
          try {
            const source = req.probeDataset?.source.case ? datasetSource(req.probeDataset) : DEFAULT_PROBE;
            const probe = (await resolveExamples(deps.store, source)).slice(0, req.probeSize ?? 100);
            const result = await withCheckpoint(deps, "reference", req.reference, (reference) =>
              withCheckpoint(deps, "candidate", req.candidate, (candidate) => computeDrift(reference, candidate, probe)),
            );
            return create(ComputeDriftResponseSchema, { ...result, definition: DRIFT_DEFINITION });
          } catch (err) {
            mapCallError(err, "probe_dataset");
          }
        },
      });
    },
  };
}
