/**
 * Checkpoints from the store as runnable models, following lineage: a model checkpoint is
 * a Hugging Face folder; an adapter checkpoint is a PEFT folder whose manifest names its
 * parent (meta.parent), itself a model or an adapter. Loading an adapter loads its
 * parent with every ancestor adapter merged ("double LoRA"), then applies the adapter.
 */
import { readLlamaFolder } from "../checkpoint/llama-folder.ts";
import { fromPeftConfig, pairWeights, readPeftFolder } from "../checkpoint/peft-folder.ts";
import { CheckpointFormatError, CheckpointKindError } from "../format-error.ts";
import { LlamaModel } from "../model/llama.ts";
import { LoraAdapter, mergeLora } from "../model/lora.ts";
import type { CheckpointManifest } from "../store/manifest.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { KIND } from "./kinds.ts";


export interface LoadedCheckpoint {
  ref: CheckpointRef;
  manifest: CheckpointManifest;
  /** A full model: the base, or the parent with all ancestor adapters merged. */
  model: LlamaModel;
  /** This checkpoint's own adapter, unmerged; absent for a model checkpoint. */
  adapter?: LoraAdapter;
  tokenizer: Tokenizer;
  /** From the root model to this checkpoint. */
  lineage: CheckpointRef[];
  dispose(): void;
}

/** The parent ref an adapter manifest names. */
export function parentOf(manifest: CheckpointManifest): CheckpointRef {
  const parent = manifest.meta.parent as Partial<CheckpointRef> | undefined;
  if (typeof parent?.uri !== "string" || typeof parent?.digest !== "string") {
    throw new CheckpointFormatError(`an ${manifest.kind} checkpoint must name its parent in meta.parent {uri, digest}`);
  }
  return { uri: parent.uri, digest: parent.digest };
}

/** A checkpoint's lineage from its root model, read from the manifests alone. */
export async function lineageOf(store: CheckpointStore, ref: CheckpointRef): Promise<CheckpointRef[]> {
  const chain = [ref];
  // Adapters and training states name a parent; a model (or a moderation classifier) is a root.
  for (let manifest = await store.readManifest(ref); manifest.kind === KIND.adapter || manifest.kind === KIND.trainingState; ) {
    const parent = parentOf(manifest);
    if (chain.some((r) => r.digest === parent.digest) || chain.length > 64) {
      throw new CheckpointFormatError(`checkpoint ${ref.uri} has a cyclic or overlong lineage`);
    }
    chain.unshift(parent);
    manifest = await store.readManifest(parent);
  }
  return chain;
}

/** The stored checkpoints whose manifests name `ref` as their parent (read from every manifest). */
export async function childrenOf(store: CheckpointStore, ref: CheckpointRef): Promise<CheckpointRef[]> {
  const children: CheckpointRef[] = [];
  for (const r of await store.list()) {
    const manifest = await store.readManifest(r).catch(() => undefined);
    if ((manifest?.kind === KIND.adapter || manifest?.kind === KIND.trainingState) && parentOf(manifest).digest === ref.digest) children.push(r);
  }
  return children;
}

/** Loads a checkpoint; `merged` folds its own adapter into the model too. */
export async function loadCheckpoint(store: CheckpointStore, ref: CheckpointRef, opts: { merged?: boolean } = {}): Promise<LoadedCheckpoint> {
  const { dir, manifest } = await store.get(ref);
  if (manifest.kind === KIND.model) {
    const { config, tensors, tokenizer } = await readLlamaFolder(dir);
    const model = LlamaModel.fromWeights(config, tensors);
    return { ref, manifest, model, tokenizer, lineage: [ref], dispose: () => model.dispose() };
  }
  // A training state holds the adapter so far in the same PEFT layout: loadable as one
  // (drift and scores along a run read it).
  if (manifest.kind !== KIND.adapter && manifest.kind !== KIND.trainingState) {
    throw new CheckpointKindError(`checkpoint ${ref.uri} is a ${manifest.kind}, not a model or an adapter`);
  }
  const parent = await loadCheckpoint(store, parentOf(manifest), { merged: true });
  let adapter: LoraAdapter;
  try {
    const folder = await readPeftFolder(dir);
    try {
      adapter = LoraAdapter.fromWeights(parent.model.config, fromPeftConfig(folder.config), pairWeights(folder.pairs));
    } catch (err) {
      throw new CheckpointFormatError(`adapter ${ref.uri} does not fit its parent: ${(err as Error).message}`);
    }
  } catch (err) {
    parent.dispose();
    throw err;
  }
  const lineage = [...parent.lineage, ref];
  if (!opts.merged) {
    return {
      ref, manifest, model: parent.model, adapter, tokenizer: parent.tokenizer, lineage,
      dispose: () => (adapter.dispose(), parent.dispose()),
    };
  }
  try {
    const model = mergeLora(parent.model, adapter);
    return { ref, manifest, model, tokenizer: parent.tokenizer, lineage, dispose: () => model.dispose() };
  } finally {
    adapter.dispose();
    parent.dispose();
  }
}
