/**
 * What a stored checkpoint is, for people and clients: its kind, name, the job that made
 * it, when it was stored, its files, its lineage, the shape of its (root) model and its
 * adapter's settings. Checkpoints are immutable, so every fact is worked out once per
 * digest; the model and adapter facts come from configs and safetensors headers, never
 * from the tensor data.
 */
import { inspectHfFolder } from "../checkpoint/hf-folder.ts";
import { inspectPeftFolder } from "../checkpoint/peft-folder.ts";
import type { FloatDtype } from "../checkpoint/safetensors.ts";
import { parseLlamaConfig } from "../model/config.ts";
import type { CheckpointManifest } from "../store/manifest.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND } from "./kinds.ts";
import { lineageOf } from "./load.ts";

export interface ModelFacts {
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Elements of the stored tensors, a tied head counted once. */
  parameterCount: number;
  /** The element type holding most of the parameters. */
  dtype: FloatDtype;
}

export interface AdapterFacts {
  rank: number;
  alpha: number;
  targetModules: string[];
  parameterCount: number;
}

export interface CheckpointDescription {
  ref: CheckpointRef;
  kind: string;
  /** meta.name: given at import, or by whoever stored it. */
  name: string;
  /** meta.job: the job that produced it. */
  jobId: string;
  /** When the store committed it (not part of the digest: the same content keeps its first time). */
  committedAt: Date;
  files: { path: string; size: number; sha256: string }[];
  sizeBytes: number;
  /** From the root model to this checkpoint. */
  lineage: CheckpointRef[];
  /** Of the root model (for a model: itself). */
  model?: ModelFacts;
  /** For adapters and training states. */
  adapter?: AdapterFacts;
}

/** The kinds whose folders hold a PEFT adapter. */
const ADAPTER_KINDS: readonly string[] = [KIND.adapter, KIND.trainingState];

export class CheckpointDescriber {
  private readonly manifests = new Map<string, Promise<{ manifest: CheckpointManifest; committedAt: Date }>>();
  private readonly models = new Map<string, Promise<ModelFacts>>();
  private readonly adapters = new Map<string, Promise<AdapterFacts>>();

  constructor(private readonly store: CheckpointStore) {}

  /** Kind and commit time from the manifest alone: what listings sort and filter on. */
  async summary(ref: CheckpointRef): Promise<{ manifest: CheckpointManifest; committedAt: Date }> {
    return once(this.manifests, ref.digest, async () => ({
      manifest: await this.store.readManifest(ref),
      committedAt: await this.store.committedAt(ref),
    }));
  }

  async describe(ref: CheckpointRef): Promise<CheckpointDescription> {
    const { manifest, committedAt } = await this.summary(ref);
    const files = Object.entries(manifest.files)
      .map(([path, { size, sha256 }]) => ({ path, size, sha256 }))
      .sort((a, b) => (a.path < b.path ? -1 : 1));
    const lineage = await lineageOf(this.store, ref);
    const description: CheckpointDescription = {
      ref,
      kind: manifest.kind,
      name: typeof manifest.meta.name === "string" ? manifest.meta.name : "",
      jobId: typeof manifest.meta.job === "string" ? manifest.meta.job : "",
      committedAt,
      files,
      sizeBytes: files.reduce((n, f) => n + f.size, 0),
      lineage,
    };
    const root = (await this.summary(lineage[0])).manifest;
    if (root.kind === KIND.model || root.kind === KIND.moderation) description.model = await this.modelFacts(lineage[0]);
    if (ADAPTER_KINDS.includes(manifest.kind)) description.adapter = await this.adapterFacts(ref);
    return description;
  }

  private modelFacts(ref: CheckpointRef): Promise<ModelFacts> {
    return once(this.models, ref.digest, async () => {
      const { dir } = await this.store.get(ref);
      const inventory = await inspectHfFolder(dir);
      const config = parseLlamaConfig(inventory.config);
      const byDtype = new Map<FloatDtype, number>();
      let parameterCount = 0;
      for (const [name, entry] of inventory.tensors) {
        // A tied head stored anyway is the embedding again; rotary buffers are not parameters.
        if ((name === "lm_head.weight" && config.tieWordEmbeddings) || name.endsWith(".rotary_emb.inv_freq")) continue;
        const n = entry.shape.reduce((a, b) => a * b, 1);
        parameterCount += n;
        byDtype.set(entry.dtype, (byDtype.get(entry.dtype) ?? 0) + n);
      }
      const architectures = inventory.config.architectures;
      return {
        architecture: Array.isArray(architectures) && typeof architectures[0] === "string" ? architectures[0] : "LlamaForCausalLM",
        vocabSize: config.vocabSize,
        hiddenSize: config.hiddenSize,
        intermediateSize: config.intermediateSize,
        numHiddenLayers: config.numHiddenLayers,
        numAttentionHeads: config.numAttentionHeads,
        numKeyValueHeads: config.numKeyValueHeads,
        maxPositionEmbeddings: config.maxPositionEmbeddings,
        tieWordEmbeddings: config.tieWordEmbeddings,
        parameterCount,
        dtype: [...byDtype].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "F32",
      };
    });
  }

  private adapterFacts(ref: CheckpointRef): Promise<AdapterFacts> {
    return once(this.adapters, ref.digest, async () => {
      const { dir } = await this.store.get(ref);
      const { config, header } = await inspectPeftFolder(dir);
      return {
        rank: config.r,
        alpha: config.lora_alpha,
        targetModules: [...config.target_modules],
        parameterCount: header.entries.reduce((n, e) => n + e.shape.reduce((a, b) => a * b, 1), 0),
      };
    });
  }
}

/** The memoised promise of a key; a failure is forgotten, so the next call tries again. */
function once<T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> {
  let value = cache.get(key);
  if (!value) {
    value = make();
    cache.set(key, value);
    value.catch(() => cache.delete(key));
  }
  return value;
}
