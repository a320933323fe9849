/**
 * Loaded checkpoints (language models and moderation classifiers) kept for Embed and
 * Score calls, by digest, within a memory budget
 * (least recently used first out). A call holds its checkpoint for its whole duration,
 * so eviction never disposes a model in use.
 */
import { CheckpointFormatError } from "../checkpoint/safetensors.ts";
import { ModelCache } from "../model-cache.ts";
import { ModerationClassifier } from "../moderation/classifier.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND, lineageOf, loadCheckpoint, type LoadedCheckpoint } from "./load.ts";

export class CheckpointCache {
  private readonly cache: ModelCache<LoadedCheckpoint | ModerationClassifier>;

  constructor(private readonly store: CheckpointStore, budgetBytes: number) {
    this.cache = new ModelCache({ budgetBytes, dispose: (loaded) => loaded.dispose() });
  }

  /** Runs fn with a moderation classifier checkpoint loaded. */
  async useModeration<R>(ref: CheckpointRef, fn: (classifier: ModerationClassifier) => R | Promise<R>): Promise<R> {
    const manifest = await this.store.readManifest(ref);
    if (manifest.kind !== KIND.moderation) {
      throw new CheckpointFormatError(`${ref.uri} is a ${manifest.kind} checkpoint, not a moderation model`);
    }
    const bytes = Object.values(manifest.files).reduce((s, f) => s + f.size, 0);
    const load = async () => ModerationClassifier.load((await this.store.get(ref)).dir);
    return this.cache.use(`moderation:${ref.digest}`, bytes, load, (c) => fn(c as ModerationClassifier));
  }

  /** Runs fn with the checkpoint loaded (adapters applied over their merged parents). */
  async use<R>(ref: CheckpointRef, fn: (loaded: LoadedCheckpoint) => R | Promise<R>): Promise<R> {
    const bytes = await this.footprint(ref);
    return this.cache.use(ref.digest, bytes, () => loadCheckpoint(this.store, ref), (loaded) => fn(loaded as LoadedCheckpoint));
  }

  /** Float32 weights take what their files take: the size of every file along the lineage. */
  private async footprint(ref: CheckpointRef): Promise<number> {
    let bytes = 0;
    for (const r of await lineageOf(this.store, ref)) {
      for (const file of Object.values((await this.store.readManifest(r)).files)) bytes += file.size;
    }
    return bytes;
  }
}
