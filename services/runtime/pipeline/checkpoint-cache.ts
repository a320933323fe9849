/**
 * Loaded checkpoints (language models and moderation classifiers) kept for Embed and
 * Score calls, by digest, within a memory budget
 * (least recently used first out). A call holds its checkpoint for its whole duration,
 * so eviction never disposes a model in use.
 */
import { inspectHfFolder } from "../checkpoint/hf-folder.ts";
import { CheckpointKindError } from "../format-error.ts";
import { ModelCache } from "../model-cache.ts";
import { ModerationClassifier } from "../moderation/classifier.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND } from "./kinds.ts";
import { lineageOf, loadCheckpoint, type LoadedCheckpoint } from "./load.ts";

export class CheckpointCache {
  private readonly cache: ModelCache<LoadedCheckpoint | ModerationClassifier>;
  /** Kind and byte size by digest: checkpoints are immutable, so the manifests are read once. */
  private readonly facts = new Map<string, { kind: string; bytes: number }>();

  constructor(private readonly store: CheckpointStore, budgetBytes: number) {
    this.cache = new ModelCache({ budgetBytes, dispose: (loaded) => loaded.dispose() });
  }

  /** Drops a deleted checkpoint: its loaded model once no call holds it. */
  forget(ref: CheckpointRef): void {
    this.cache.delete(ref.digest);
    this.cache.delete(`moderation:${ref.digest}`);
    this.facts.delete(ref.digest);
  }

  /** Runs fn with a moderation classifier checkpoint loaded. */
  async useModeration<R>(ref: CheckpointRef, fn: (classifier: ModerationClassifier) => R | Promise<R>): Promise<R> {
    const { kind, bytes } = await this.factsOf(ref);
    if (kind !== KIND.moderation) throw new CheckpointKindError(`${ref.uri} is a ${kind} checkpoint, not a moderation model`);
    const load = async () => ModerationClassifier.load((await this.store.get(ref)).dir);
    return this.cache.use(`moderation:${ref.digest}`, bytes, load, (c) => fn(c as ModerationClassifier));
  }

  /** Runs fn with the checkpoint loaded (adapters applied over their merged parents). */
  async use<R>(ref: CheckpointRef, fn: (loaded: LoadedCheckpoint) => R | Promise<R>): Promise<R> {
    const { bytes } = await this.factsOf(ref);
    return this.cache.use(ref.digest, bytes, () => loadCheckpoint(this.store, ref), (loaded) => fn(loaded as LoadedCheckpoint));
  }

  /**
   * The checkpoint's kind, and its memory: the root model's weights as float32 (F16 and
   * BF16 files are widened on load, so twice their size), and the other files of the
   * lineage as stored.
   */
  private async factsOf(ref: CheckpointRef): Promise<{ kind: string; bytes: number }> {
    const known = this.facts.get(ref.digest);
    if (known) return known;
    let bytes = 0;
    let kind = "";
    for (const r of await lineageOf(this.store, ref)) {
      const manifest = await this.store.readManifest(r);
      kind = manifest.kind;
      if (kind === KIND.model) bytes += await float32Bytes((await this.store.get(r)).dir);
      else for (const file of Object.values(manifest.files)) bytes += file.size;
    }
    const facts = { kind, bytes };
    this.facts.set(ref.digest, facts);
    return facts;
  }
}

/** A Hugging Face folder's weights as float32, from its headers. */
async function float32Bytes(dir: string): Promise<number> {
  let elements = 0;
  for (const entry of (await inspectHfFolder(dir)).tensors.values()) elements += entry.shape.reduce((a, b) => a * b, 1);
  return elements * 4;
}
