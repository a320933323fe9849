import { create } from "@bufbuild/protobuf";
import {
  ComputeDriftResponseSchema,
  EmbedResponseSchema,
  EmbedService,
  Pooling,
  type EmbedRequest,
} from "../../gen/vaccine/v1/embed_pb.ts";
import { boundsOf, checkTextLength, DEFAULT_BOUNDS, type CallBounds } from "../common/bounds.ts";
import { embedBatcher } from "../common/batched-calls.ts";
import type { SuiteDeps } from "../common/deps.ts";
import { mapCallError, withCheckpoint } from "../common/checkpoint-calls.ts";
import type { ServiceModule } from "../platform/server.ts";
import { assertCheckpointReadable, assertDatasetReadable, scopeOf } from "../common/ownership.ts";
import { checkpointRefOf, datasetSource } from "../common/refs.ts";
import { principalOf } from "../platform/principal.ts";
import { RequestValidator } from "../platform/validate.ts";
import { checkCheckpointRef, checkDatasetRef } from "../common/validate-refs.ts";
import { resolveExamples } from "../runtime/pipeline/datasets.ts";
import { computeDrift, DRIFT_DEFINITION } from "../runtime/pipeline/drift.ts";
import type { Pooling as RuntimePooling } from "../runtime/pipeline/hidden-states.ts";
import { CallSlots, DEFAULT_INFERENCE_CONCURRENCY } from "../common/call-slots.ts";

/** Largest number of texts in one Embed call. */
export const MAX_EMBED_TEXTS = 256;
/** Largest number of layers one Embed call may name (more than any model has). */
export const MAX_EMBED_LAYERS = 1024;
/** Default probe: a fixed sample of the built-in alignment data. */
export const DEFAULT_PROBE = { builtin: { name: "alignment", size: 100, seed: 0 } };

const POOLING: Record<Pooling, RuntimePooling> = {
  [Pooling.UNSPECIFIED]: "mean",
  [Pooling.MEAN]: "mean",
  [Pooling.LAST_TOKEN]: "last",
  [Pooling.NONE]: "none",
};

/** Everything of an Embed request that can be checked before the model is loaded; text lengths in tokens are checked once it is. */
export function checkEmbedRequest(req: EmbedRequest, bounds: CallBounds = DEFAULT_BOUNDS): void {
  const v = new RequestValidator();
  checkCheckpointRef(v, "checkpoint", req.checkpoint);
  v.count("texts", req.texts, { min: 1, max: MAX_EMBED_TEXTS });
  v.count("layers", req.layers, { max: MAX_EMBED_LAYERS });
  if (req.texts.length <= MAX_EMBED_TEXTS) req.texts.forEach((t, i) => checkTextLength(v, `texts[${i}]`, t, bounds));
  if (req.layers.length <= MAX_EMBED_LAYERS) req.layers.forEach((l, i) => v.number(`layers[${i}]`, l, { min: 0 }));
  v.check();
}

/** EmbedService: hidden states and harmful embedding drift. */
export function embedService(deps: SuiteDeps): ServiceModule {
  const embed = embedBatcher(deps);
  // ComputeDrift runs many forward passes: it takes turns with Score's decoding (call-slots.ts).
  const slots = deps.inferenceSlots ?? new CallSlots(DEFAULT_INFERENCE_CONCURRENCY);
  return {
    desc: EmbedService,
    register(router) {
      router.service(EmbedService, {
        async embed(req, ctx) {
          const bounds = boundsOf(deps);
          checkEmbedRequest(req, bounds);
          try {
            const scope = scopeOf(principalOf(ctx));
            const ref = checkpointRefOf(req.checkpoint);
            await assertCheckpointReadable(deps, scope, ref);
            // Shares forward passes with concurrent calls on the same checkpoint and options.
            const { hiddenSize, states } = await embed(
              { ref, texts: req.texts, layers: req.layers, final: req.includeFinalHidden, pooling: POOLING[req.pooling], maxTokens: bounds.maxPromptTokens, maxValues: bounds.maxEmbedValues },
              ctx.signal,
            );
            return create(EmbedResponseSchema, {
              hiddenSize,
              embeddings: states.map((s) => ({
                tokenCount: s.tokenCount,
                layers: s.layers.map((l) => ({ layer: l.layer, vectors: { rows: l.vectors.rows, cols: l.vectors.cols, values: Array.from(l.vectors.values) } })),
              })),
            });
          } catch (err) {
            mapCallError(err, "checkpoint");
          }
        },
        async computeDrift(req, ctx) {
          const v = new RequestValidator();
          checkCheckpointRef(v, "reference", req.reference);
          checkCheckpointRef(v, "candidate", req.candidate);
          checkDatasetRef(v, "probe_dataset", req.probeDataset, false);
          v.number("probe_size", req.probeSize, { min: 1, max: 10_000, integer: true });
          v.check();
          try {
            const scope = scopeOf(principalOf(ctx));
            const source = req.probeDataset?.source.case ? datasetSource(req.probeDataset) : DEFAULT_PROBE;
            await assertDatasetReadable(deps.store, scope, source);
            const probe = (await resolveExamples(deps.store, source)).slice(0, req.probeSize ?? 100);
            const result = await slots.run(
              () =>
                withCheckpoint(deps, "reference", req.reference, (reference) =>
                  withCheckpoint(deps, "candidate", req.candidate, (candidate) => computeDrift(reference, candidate, probe, ctx.signal), scope),
                  scope,
                ),
              ctx.signal,
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
