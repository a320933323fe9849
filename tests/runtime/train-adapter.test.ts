// Alignment and fine-tuning through the store: lineage, double LoRA, resume after a stop.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { loadCheckpoint, parentOf } from "../../services/runtime/pipeline/load.ts";
import { trainAdapter, type AdapterTrainingSpec } from "../../services/runtime/pipeline/train-adapter.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { tinyStore, type TinyStore } from "../helpers/tiny-store.ts";

let t: TinyStore;
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  t = await tinyStore();
});
afterAll(() => t.cleanup());

const spec = (parent: CheckpointRef, o: Partial<AdapterTrainingSpec> = {}): AdapterTrainingSpec => ({
  parent,
  data: EXAMPLES,
  method: { kind: "vaccine", rho: 0.5, refreshEvery: 1 },
  lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] },
  training: { learningRate: 3e-2, maxSteps: 6, batchSize: 3, maxSequenceLength: 64, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 3 },
  checkpointEvery: 2,
  ...o,
});

describe("trainAdapter", () => {
  it("aligns, then fine-tunes over the merged aligned model, with lineage in every manifest", async () => {
    const events: string[] = [];
    const aligned = (await trainAdapter(t.store, spec(t.base), {
      onCheckpoint: (ref, kind, step) => events.push(`${kind}@${step}`),
    }))!;
    expect(events).toEqual(["training-state@2", "training-state@4", "result@6"]);
    const manifest = await t.store.readManifest(aligned);
    expect(manifest.kind).toBe("adapter");
    expect(parentOf(manifest)).toEqual(t.base);
    expect(Object.keys(manifest.files).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors"]);

    const tuned = (await trainAdapter(t.store, spec(aligned, { method: { kind: "sft" } })))!;
    const loaded = await loadCheckpoint(t.store, tuned);
    expect(loaded.lineage).toEqual([t.base, aligned, tuned]);
    // The fine-tuned checkpoint runs as (base + aligned merged) + its own adapter.
    const alignedMerged = await loadCheckpoint(t.store, aligned, { merged: true });
    for (const [name, w] of alignedMerged.model.weights) {
      expect(tf.tidy(() => w.sub(loaded.model.weights.get(name)!).abs().max().dataSync()[0])).toBe(0);
    }
    expect(loaded.adapter).toBeDefined();
    alignedMerged.dispose();
    loaded.dispose();
  });

  it("stops on the signal with a training state and resumes to the same adapter as an uninterrupted run", async () => {
    const straight = (await trainAdapter(t.store, spec(t.base)))!;
    const abort = new AbortController();
    let state: CheckpointRef | undefined;
    const stopped = await trainAdapter(t.store, spec(t.base), {
      signal: abort.signal,
      onStep: (m) => m.step === 3 && abort.abort(),
      onCheckpoint: (ref, kind) => kind === "training-state" && (state = ref),
    });
    expect(stopped).toBeUndefined();
    expect((await t.store.readManifest(state!)).meta.step).toBe(3);
    // A training state loads as the adapter so far, over its parent.
    const partial = await loadCheckpoint(t.store, state!);
    expect(partial.lineage).toEqual([t.base, state]);
    expect(partial.adapter).toBeDefined();
    partial.dispose();
    const resumed = await trainAdapter(t.store, spec(t.base), { resumeFrom: state });
    // Content-addressed: the same adapter bytes and lineage give the same ref.
    expect(resumed).toEqual(straight);
    // A training state is refused for a run with other settings.
    await expect(trainAdapter(t.store, spec(t.base, { checkpointEvery: 2, method: { kind: "sft" } }), { resumeFrom: state })).rejects.toThrow(/another run/);
  });
});
