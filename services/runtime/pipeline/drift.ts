/**
 * Harmful embedding drift (docs/method.md#harmful-embedding-drift): over a probe set of alignment
 * examples (prompt and answer, as alignment trained on them), the difference between the
 * attention outputs A_l of a reference and a candidate checkpoint, over real tokens only.
 * Per layer: the sum of squared differences (the reference code's sum of squared Frobenius
 * norms) and its square root (the paper's L2 norm); totals are sums over layers.
 */
import * as tf from "@tensorflow/tfjs";
import { exampleIds } from "../data/collate.ts";
import type { Example } from "../data/template.ts";
import type { LoadedCheckpoint } from "./load.ts";
import { padded } from "./hidden-states.ts";
import { nextTurn } from "../next-turn.ts";

export const DRIFT_DEFINITION =
  "per layer l: squared_norm = sum over probe examples and their real tokens of ||A_l(candidate) - A_l(reference)||^2, " +
  "A_l = attention output of layer l after o_proj, before the residual add; l2_norm = sqrt(squared_norm); " +
  "totals are sums over layers";

/** The two checkpoints cannot be compared (different tokenizers or shapes). */
export class DriftPreconditionError extends Error {}

export interface DriftResult {
  layers: { layer: number; squaredNorm: number; l2Norm: number }[];
  totalSquaredNorm: number;
  totalL2Norm: number;
  probeSize: number;
  tokenCount: number;
}

const BATCH = 16;

function assertComparable(a: LoadedCheckpoint, b: LoadedCheckpoint): void {
  const ca = a.model.config;
  const cb = b.model.config;
  for (const key of ["vocabSize", "hiddenSize", "numHiddenLayers", "numAttentionHeads", "numKeyValueHeads", "intermediateSize"] as const) {
    // Named as config.json names it (vocab_size), which is what a client can look at.
    const name = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    if (ca[key] !== cb[key]) throw new DriftPreconditionError(`the checkpoints differ in ${name}: ${ca[key]} (reference) and ${cb[key]} (candidate)`);
  }
  const probe = "Below is an instruction that describes a task.";
  const same = a.tokenizer.vocabSize === b.tokenizer.vocabSize && a.tokenizer.encode(probe).join() === b.tokenizer.encode(probe).join();
  if (!same) throw new DriftPreconditionError("the checkpoints do not share a tokenizer");
}

/**
 * Between batches it hands the event loop back (a large probe took 17 s of the serving thread
 * at once, health checks included), then checks `signal`: once it has aborted, no further
 * batch is computed and the promise rejects with its reason.
 */
export async function computeDrift(reference: LoadedCheckpoint, candidate: LoadedCheckpoint, probe: Example[], signal?: AbortSignal): Promise<DriftResult> {
  assertComparable(reference, candidate);
  const layers = reference.model.config.numHiddenLayers;
  const squared = new Float64Array(layers);
  let tokens = 0;
  // The examples as training sees them, without eos.
  const rows = probe.map((e) => exampleIds(reference.tokenizer, e).ids);
  for (let start = 0; start < rows.length; start += BATCH) {
    if (start > 0) await nextTurn();
    signal?.throwIfAborted();
    const { ids, mask, lengths } = padded(rows.slice(start, start + BATCH), reference.tokenizer.padId);
    tokens += lengths.reduce((s, n) => s + n, 0);
    const perLayer = tf.tidy(() => {
      const m = mask.toFloat().expandDims(-1);
      const a = reference.model.states(ids, mask, { lora: reference.adapter, returnAttentionOutputs: true }).attentionOutputs!;
      const b = candidate.model.states(ids, mask, { lora: candidate.adapter, returnAttentionOutputs: true }).attentionOutputs!;
      return tf.stack(a.map((x, l) => x.sub(b[l]).mul(m).square().sum())).dataSync();
    });
    tf.dispose([ids, mask]);
    perLayer.forEach((v, l) => (squared[l] += v));
  }
  const result = Array.from(squared, (s, layer) => ({ layer, squaredNorm: s, l2Norm: Math.sqrt(s) }));
  return {
    layers: result,
    totalSquaredNorm: result.reduce((s, r) => s + r.squaredNorm, 0),
    totalL2Norm: result.reduce((s, r) => s + r.l2Norm, 0),
    probeSize: probe.length,
    tokenCount: tokens,
  };
}
