/**
 * Embed and Moderate calls batched across callers (call-batcher.ts): calls for the same
 * checkpoint and options share forward passes. A call's own bad input fails it alone; what
 * every call of a batch shares (the checkpoint, the layers) fails them all alike.
 */
import type { Meter } from "@opentelemetry/api";
import type { ModerationClassifier, ModerationPair, ModerationResult } from "../runtime/moderation/classifier.ts";
import { hiddenStatesOfEach, type StatesOptions, type TextStates } from "../runtime/pipeline/hidden-states.ts";
import type { CheckpointCache } from "../runtime/pipeline/checkpoint-cache.ts";
import type { CheckpointRef } from "../runtime/store/store.ts";
import { batchWindowOf, CallBatcher, type BatchWindow, type Outcome } from "./call-batcher.ts";

/** Metric: calls answered by one batched run, by vaccine.rpc (embed, moderate). */
export const BATCH_CALLS_METRIC = "vaccine.batch.calls";

interface BatchDeps {
  checkpoints: CheckpointCache;
  meter: Meter;
  batching?: BatchWindow;
}

export interface EmbedCall extends StatesOptions {
  ref: CheckpointRef;
  texts: string[];
  /** Empty: every layer of the model. */
  layers: number[];
}

export interface Embedding {
  hiddenSize: number;
  states: TextStates[];
}

export interface ModerateCall {
  ref: CheckpointRef;
  pairs: ModerationPair[];
  threshold: number;
  /** The call's own checks once the classifier is loaded (e.g. pair lengths in its tokens). */
  check?: (classifier: ModerationClassifier) => void;
}

function onRun(deps: BatchDeps, rpc: string): (calls: number) => void {
  const histogram = deps.meter.createHistogram(BATCH_CALLS_METRIC, { unit: "{call}", description: "Calls answered by one batched run of Embed or Moderate" });
  return (calls) => histogram.record(calls, { "vaccine.rpc": rpc });
}

/** Embed calls, batched: the hidden states of each call's texts. */
export function embedBatcher(deps: BatchDeps): (call: EmbedCall, signal?: AbortSignal) => Promise<Embedding> {
  const batcher = new CallBatcher<EmbedCall, Embedding>(
    batchWindowOf(deps),
    (calls, abandoned) =>
      deps.checkpoints.use(calls[0].ref, async (loaded) => {
        const { layers, final, pooling, maxTokens, maxValues } = calls[0];
        const all = Array.from({ length: loaded.model.config.numHiddenLayers }, (_, i) => i);
        const each = await hiddenStatesOfEach(loaded, calls.map((c) => c.texts), { layers: layers.length ? layers : all, final, pooling, maxTokens, maxValues }, abandoned);
        return each.map((states): Outcome<Embedding> => (states instanceof Error ? { error: states } : { value: { hiddenSize: loaded.model.config.hiddenSize, states } }));
      }),
    onRun(deps, "embed"),
  );
  return (call, signal) =>
    batcher.call(JSON.stringify([call.ref.digest, call.layers, call.final, call.pooling, call.maxTokens, call.maxValues]), call, call.texts.length, signal);
}

/** Moderate calls, batched: each call's results. */
export function moderateBatcher(deps: BatchDeps): (call: ModerateCall, signal?: AbortSignal) => Promise<ModerationResult[]> {
  const batcher = new CallBatcher<ModerateCall, ModerationResult[]>(
    batchWindowOf(deps),
    (calls) =>
      deps.checkpoints.useModeration(calls[0].ref, (classifier) => {
        const checked = calls.map((c): Outcome<null> => {
          try {
            c.check?.(classifier);
            return { value: null };
          } catch (error) {
            return { error };
          }
        });
        const ok = calls.filter((_, i) => "value" in checked[i]);
        const results = ok.length ? classifier.classify(ok.flatMap((c) => c.pairs), calls[0].threshold) : [];
        let at = 0;
        return calls.map((c, i): Outcome<ModerationResult[]> => ("error" in checked[i] ? checked[i] : { value: results.slice(at, (at += c.pairs.length)) }));
      }),
    onRun(deps, "moderate"),
  );
  return (call, signal) => batcher.call(JSON.stringify([call.ref.digest, call.threshold]), call, call.pairs.length, signal);
}
