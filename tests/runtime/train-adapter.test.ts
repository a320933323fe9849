// Alignment and fine-tuning through the store: lineage, double LoRA, resume after a stop,
// and the steps split over data-parallel threads (VACCINE_TRAIN_THREADS).
import * as tf from "@tensorflow/tfjs";
import { context, metrics } from "@opentelemetry/api";
import { hrTimeToMilliseconds } from "@opentelemetry/core";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TRAINING, trainingTelemetry } from "../../services/jobs/telemetry.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import type { LoraConfig } from "../../services/runtime/model/lora.ts";
import { loadCheckpoint, parentOf } from "../../services/runtime/pipeline/load.ts";
import { trainAdapter, type AdapterTrainingSpec } from "../../services/runtime/pipeline/train-adapter.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { EXAMPLES, HARMFUL_EXAMPLES } from "../helpers/tiny-world.ts";
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

  it("with VACCINE_TRAIN_THREADS=2 trains every method and guard data-parallel: the same adapter within float rounding, a span per step and pass", async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    // With LoRA dropout: each thread applies its rows of the masks one thread would draw.
    const lora: LoraConfig = { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] };
    const adapterOf = async (ref: CheckpointRef) => {
      const c = await loadCheckpoint(t.store, ref);
      const w = new Map([...c.adapter!.pairs].flatMap(([n, p]) => [[`${n}.A`, p.a.dataSync().slice()], [`${n}.B`, p.b.dataSync().slice()]] as const));
      c.dispose();
      return w;
    };
    const { phaseSpan } = TRAINING;
    const cases: [string, Partial<AdapterTrainingSpec>, string[]][] = [
      ["SFT", { method: { kind: "sft" } }, [phaseSpan.update]],
      ["Vaccine", { method: { kind: "vaccine", rho: 0.5, refreshEvery: 1 } }, [phaseSpan.perturbation, phaseSpan.update]],
      ["Booster", { method: { kind: "booster", lambda: 5, alpha: 0.1 }, harmful: HARMFUL_EXAMPLES }, [phaseSpan.harmful, phaseSpan.harmful_shifted, phaseSpan.update]],
      ["SFT under Lisa", { method: { kind: "sft" }, guard: { kind: "lisa", alignmentSteps: 2, userSteps: 2, rho: 1, alignmentData: EXAMPLES.slice(0, 3) } }, [phaseSpan.update]],
    ];
    for (const [name, o, passes] of cases) {
      const one = (await trainAdapter(t.store, spec(t.base, { ...o, lora })))!;
      const exporter = new InMemorySpanExporter();
      const telemetry = trainingTelemetry(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("test"), metrics.getMeter("test"), { kind: "align", method: name, rho: 0.5 });
      const logs: string[] = [];
      const before = process.env.VACCINE_TRAIN_THREADS;
      process.env.VACCINE_TRAIN_THREADS = "2";
      let two: CheckpointRef;
      try {
        two = (await trainAdapter(t.store, spec(t.base, { ...o, lora }), { step: telemetry.step, phase: telemetry.phase, onLog: (m) => logs.push(m) }))!;
      } finally {
        if (before === undefined) delete process.env.VACCINE_TRAIN_THREADS;
        else process.env.VACCINE_TRAIN_THREADS = before;
      }
      expect(logs, name).toContain("training data-parallel on 2 threads");
      const [a, b] = [await adapterOf(one), await adapterOf(two)];
      // B starts at zero: its size is how far training moved the adapter.
      let moved = 0;
      let diff = 0;
      for (const [name, x] of a) {
        const y = b.get(name)!;
        for (let i = 0; i < x.length; i++) {
          diff = Math.max(diff, Math.abs(x[i] - y[i]));
          if (name.endsWith(".B")) moved = Math.max(moved, Math.abs(x[i]));
        }
      }
      expect(moved, name).toBeGreaterThan(1e-3);
      expect(diff / moved, `${name}: adapters differ by float rounding only`).toBeLessThan(1e-3);
      // One step span per step, each with its passes as children, in the order they ran.
      const spans = exporter.getFinishedSpans();
      const steps = spans.filter((x) => x.name === TRAINING.stepSpan);
      expect(steps.map((x) => x.attributes["vaccine.step"])).toEqual([1, 2, 3, 4, 5, 6]);
      for (const st of steps) {
        const children = spans.filter((x) => x.parentSpanContext?.spanId === st.spanContext().spanId);
        expect(children.map((x) => x.name), name).toEqual(passes);
        children.slice(1).forEach((x, i) => expect(hrTimeToMilliseconds(x.startTime), name).toBeGreaterThanOrEqual(hrTimeToMilliseconds(children[i].startTime)));
      }
    }
  });
});
