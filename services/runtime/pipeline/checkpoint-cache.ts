/**
 * Loaded checkpoints (language models and moderation classifiers) kept for Embed and
 * Score calls, by digest, within a memory budget
 * (least recently used first out). A call holds its checkpoint for its whole duration,
 * so eviction never disposes a model in use.
 */
import type * as tf from "@tensorflow/tfjs";
import { CheckpointKindError } from "../format-error.ts";
import { ModelCache } from "../model-cache.ts";
import { ModerationClassifier } from "../moderation/classifier.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND } from "./kinds.ts";
import { loadCheckpoint, type LoadedCheckpoint } from "./load.ts";

export class CheckpointCache {
  private readonly cache: ModelCache<LoadedCheckpoint | ModerationClassifier>;
  /** Kind by digest: checkpoints are immutable, so each manifest is read once. */
  private readonly kinds = new Map<string, string>();

  constructor(private readonly store: CheckpointStore, budgetBytes: number) {
    this.cache = new ModelCache({ budgetBytes, sizeOf: loadedBytes, dispose: (loaded) => loaded.dispose() });
  }

  /** Drops a deleted checkpoint: its loaded model once no call holds it. */
  forget(ref: CheckpointRef): void {
    this.cache.delete(ref.digest);
    this.cache.delete(`moderation:${ref.digest}`);
    this.kinds.delete(ref.digest);
  }

  /** Runs fn with a moderation classifier checkpoint loaded. */
  async useModeration<R>(ref: CheckpointRef, fn: (classifier: ModerationClassifier) => R | Promise<R>): Promise<R> {
    let kind = this.kinds.get(ref.digest);
    if (kind === undefined) this.kinds.set(ref.digest, (kind = (await this.store.readManifest(ref)).kind));
    if (kind !== KIND.moderation) throw new CheckpointKindError(`${ref.uri} is a ${kind} checkpoint, not a moderation model`);
    const load = async () => ModerationClassifier.load((await this.store.get(ref)).dir);
    return this.cache.use(`moderation:${ref.digest}`, load, (c) => fn(c as ModerationClassifier));
  }

  /** Runs fn with the checkpoint loaded (adapters applied over their merged parents). */
  async use<R>(ref: CheckpointRef, fn: (loaded: LoadedCheckpoint) => R | Promise<R>): Promise<R> {
    return this.cache.use(ref.digest, () => loadCheckpoint(this.store, ref), (loaded) => fn(loaded as LoadedCheckpoint));
  }
}

/**
 * What a loaded checkpoint holds, in bytes: its tensors as loaded (float32, so a BF16 or F16
 * model takes twice its files), counted from the model itself rather than guessed from files.
 */
function loadedBytes(loaded: LoadedCheckpoint | ModerationClassifier): number {
  const tensors: tf.Tensor[] = [...loaded.model.weights.values()];
  if (loaded instanceof ModerationClassifier) tensors.push(loaded.score);
  else for (const { a, b } of loaded.adapter?.pairs.values() ?? []) tensors.push(a, b);
  return tensors.reduce((n, t) => n + t.size * 4, 0);
}
