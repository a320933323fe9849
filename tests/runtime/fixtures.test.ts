/**
 * External fixtures (tests/fixtures/README.md): tiny Hugging Face Llama folders and a PEFT
 * adapter whose expected outputs come from an independent PyTorch implementation. Each
 * folder goes through the store and loadCheckpoint, the path every service takes, so a
 * loader bug (names, shards, dtypes, tying, LoRA) shows up as a wrong number here.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { readHfFolder } from "../../services/runtime/checkpoint/hf-folder.ts";
import { peftTensorName, readPeftFolder } from "../../services/runtime/checkpoint/peft-folder.ts";
import { readSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import type { LlamaModel } from "../../services/runtime/model/llama.ts";
import type { LoraAdapter } from "../../services/runtime/model/lora.ts";
import { causalLmLoss } from "../../services/runtime/model/loss.ts";
import { hiddenStates, textIds } from "../../services/runtime/pipeline/hidden-states.ts";
import { KIND } from "../../services/runtime/pipeline/kinds.ts";
import { loadCheckpoint, type LoadedCheckpoint } from "../../services/runtime/pipeline/load.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { compareScaled, maxAbsDiff, type NestedNumbers } from "../helpers/tolerance.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));
/** The README's tolerance for float32 math (the BF16 folder is upcast exactly, so it too). */
const RTOL = 1e-4;
/** Merged against unmerged LoRA in the same code: only rounding may differ. */
const MERGE_ATOL = 1e-5;

interface SequenceSpec {
  name: string;
  input_ids: number[];
  text: string | null;
}
interface Outputs {
  logits: number[][];
  argmax: number[];
  loss: number;
  final_norm_hidden: number[][];
  hidden_after_layer_last: number[][];
  attn_out_last: number[][];
}
interface TensorSpec {
  shape: number[];
  dtype: "F32" | "BF16";
  file: string;
}
interface Expected {
  sequences: SequenceSpec[];
  folders: Record<string, { parameter_count: number; tensors: Record<string, TensorSpec> }>;
  cases: Record<string, { model: string; adapter: string | null; results: Record<string, Outputs & { argmax_margin_min: number }> }>;
}

const expected = JSON.parse(readFileSync(join(FIXTURES, "expected.json"), "utf8")) as Expected;
const ARRAYS = ["logits", "final_norm_hidden", "hidden_after_layer_last", "attn_out_last"] as const;

/** One sequence alone: batch 1, no padding, the forward's per-layer outputs at the last position. */
function run(model: LlamaModel, adapter: LoraAdapter | undefined, ids: number[]): Outputs {
  return tf.tidy(() => {
    const t = ids.length;
    const input = tf.tensor2d([ids], [1, t], "int32");
    const res = model.forward(input, tf.onesLike(input), {
      lora: adapter,
      returnAttentionOutputs: true,
      returnHidden: true,
      returnLayerOutputs: true,
    });
    const lastOf = (x: tf.Tensor3D) => (x.slice([0, t - 1, 0], [1, 1, -1]).reshape([-1]).arraySync() as number[]);
    return {
      logits: res.logits.arraySync()[0],
      argmax: (res.logits.argMax(-1).arraySync() as number[][])[0],
      loss: causalLmLoss(res.logits, input).arraySync(),
      final_norm_hidden: res.hidden!.arraySync()[0],
      hidden_after_layer_last: res.layerOutputs!.map(lastOf),
      attn_out_last: res.attentionOutputs!.map(lastOf),
    };
  }) as unknown as Outputs;
}

/** Logits of each position fed one token at a time through the KV cache (generation's path). */
function runIncremental(model: LlamaModel, adapter: LoraAdapter | undefined, ids: number[]): number[][] {
  const cache = model.createCache();
  try {
    return ids.map((id) =>
      tf.tidy(() => {
        const input = tf.tensor2d([[id]], [1, 1], "int32");
        return model.forward(input, tf.onesLike(input), { lora: adapter, cache }).logits.arraySync()[0][0];
      }),
    );
  } finally {
    cache.dispose();
  }
}

/** Every disagreement of one case with expected.json, as lines (empty when all match). */
function mismatches(caseName: string, loaded: LoadedCheckpoint, outputs: Map<string, Outputs>): string[] {
  const problems: string[] = [];
  const { results } = expected.cases[caseName];
  for (const seq of expected.sequences) {
    const want = results[seq.name];
    const got = run(loaded.model, loaded.adapter, seq.input_ids);
    outputs.set(seq.name, got);
    const where = `${caseName}/${seq.name}`;
    for (const field of ARRAYS) {
      const c = compareScaled(got[field], want[field], RTOL);
      if (c.failures > 0) {
        const w = c.worst!;
        problems.push(
          `${where}/${field}: ${c.failures} of ${c.count} out of tolerance, max |diff| ${c.scaledMaxDiff.toExponential(2)} of scale; ` +
            `worst [${w.index.join("][")}] got ${w.actual.toPrecision(7)} want ${w.expected}`,
        );
      }
    }
    const loss = compareScaled(got.loss, want.loss, RTOL);
    if (loss.failures > 0) problems.push(`${where}/loss: got ${got.loss.toPrecision(7)} want ${want.loss}`);
    if (got.argmax.join() !== want.argmax.join()) problems.push(`${where}/argmax: got [${got.argmax}] want [${want.argmax}]`);
    const cached = compareScaled(runIncremental(loaded.model, loaded.adapter, seq.input_ids), want.logits, RTOL);
    if (cached.failures > 0) problems.push(`${where}/logits with the KV cache: max |diff| ${cached.scaledMaxDiff.toExponential(2)} of scale`);
  }
  // The pipeline's own extraction (EmbedService, drift), with the texts batched together:
  // the shorter one is right-padded, which must not change its vectors.
  const texts = expected.sequences.filter((s) => s.text !== null);
  const layers = results[texts[0].name].attn_out_last.map((_, l) => l);
  const states = hiddenStates(loaded, texts.map((s) => s.text!), { layers, final: true, pooling: "last", maxTokens: 128 });
  texts.forEach((seq, i) => {
    const want = results[seq.name];
    for (const { layer, vectors } of states[i].layers) {
      const ref = layer === -1 ? want.final_norm_hidden[want.final_norm_hidden.length - 1] : want.attn_out_last[layer];
      const c = compareScaled(Array.from(vectors.values), ref, RTOL);
      if (c.failures > 0) problems.push(`${caseName}/${seq.name}/hiddenStates layer ${layer}: max |diff| ${c.scaledMaxDiff.toExponential(2)} of scale`);
    }
  });
  return problems;
}

function bytesOf(data: Float32Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function parameterCount(tensors: HostTensors): number {
  return [...tensors.values()].reduce((n, t) => n + t.data.length, 0);
}

function inventory(tensors: HostTensors): Record<string, number[]> {
  return Object.fromEntries([...tensors].map(([name, t]) => [name, t.shape]).sort(([a], [b]) => (a < b ? -1 : 1)));
}

function expectedInventory(folder: string): Record<string, number[]> {
  const specs = expected.folders[folder].tensors;
  return Object.fromEntries(Object.keys(specs).sort().map((name) => [name, specs[name].shape]));
}

describe("Llama fixtures: folders as stored", () => {
  it("reads the F32 folder: every tensor, its shape, the parameter count, one weight file", async () => {
    const folder = await readHfFolder(join(FIXTURES, "llama-f32-gqa"));
    expect(inventory(folder.tensors)).toEqual(expectedInventory("llama-f32-gqa"));
    expect(parameterCount(folder.tensors)).toBe(expected.folders["llama-f32-gqa"].parameter_count);
    expect(folder.weightFiles).toEqual(["model.safetensors"]);
    expect(folder.metadata).toEqual({ format: "pt" });
    expect(folder.generationConfig).toMatchObject({ bos_token_id: 1, eos_token_id: 2, do_sample: false });
  });

  it("reads the sharded BF16 folder: shards in order, each tensor from its shard, exact upcast, no lm_head", async () => {
    const dir = join(FIXTURES, "llama-bf16-sharded-tied");
    const folder = await readHfFolder(dir);
    const specs = expected.folders["llama-bf16-sharded-tied"];
    expect(inventory(folder.tensors)).toEqual(expectedInventory("llama-bf16-sharded-tied"));
    expect(folder.tensors.has("lm_head.weight")).toBe(false);
    // embed_tokens is counted once: the head is the same matrix.
    expect(parameterCount(folder.tensors)).toBe(specs.parameter_count);
    expect(folder.weightFiles).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    expect(folder.metadata).toEqual({ format: "pt" });
    for (const file of folder.weightFiles) {
      const shard = await readSafetensors(join(dir, file));
      const want = Object.keys(specs.tensors).filter((name) => specs.tensors[name].file === file).sort();
      expect([...shard.tensors.keys()].sort(), file).toEqual(want);
      // The folder's tensor is the shard's, value for value.
      for (const [name, t] of shard.tensors) {
        expect(bytesOf(folder.tensors.get(name)!.data).equals(bytesOf(t.data)), name).toBe(true);
      }
    }
    // bf16 -> f32 is bits << 16: the low half of every decoded float is zero.
    for (const [name, t] of folder.tensors) {
      const bits = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
      expect(bits.every((b) => (b & 0xffff) === 0), name).toBe(true);
    }
  });

  it("reads the PEFT adapter: 14 modules, PEFT names, r 4, alpha 8", async () => {
    const folder = await readPeftFolder(join(FIXTURES, "adapter-f32-gqa"));
    expect(folder.config).toMatchObject({ r: 4, lora_alpha: 8, lora_dropout: 0, peft_type: "LORA" });
    expect(folder.pairs).toHaveLength(14);
    const tensors: HostTensors = new Map(
      folder.pairs.flatMap((p) => [[peftTensorName(p.module, "A"), p.a], [peftTensorName(p.module, "B"), p.b]] as const),
    );
    expect(inventory(tensors)).toEqual(expectedInventory("adapter-f32-gqa"));
    expect(parameterCount(tensors)).toBe(expected.folders["adapter-f32-gqa"].parameter_count);
  });
});

describe("Llama fixtures: forward passes through loadCheckpoint", () => {
  let root: string;
  let store: LocalCheckpointStore;
  const refs = new Map<string, CheckpointRef>();
  const results = new Map<string, Map<string, Outputs>>();
  let baseline = 0;

  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    root = mkdtempSync(join(tmpdir(), "vaccine-fixtures-"));
    store = new LocalCheckpointStore(root);
    for (const folder of ["llama-f32-gqa", "llama-bf16-sharded-tied"]) {
      refs.set(folder, await store.put(join(FIXTURES, folder), { kind: KIND.model, meta: { name: folder } }));
    }
    const parent = refs.get("llama-f32-gqa")!;
    refs.set("adapter-f32-gqa", await store.put(join(FIXTURES, "adapter-f32-gqa"), { kind: KIND.adapter, meta: { parent } }));
    baseline = tf.memory().numTensors;
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const cases: [string, boolean][] = [
    ["base_f32", false],
    ["adapter_unmerged_f32", false],
    ["adapter_merged_f32", true],
    ["base_bf16_sharded_tied", false],
  ];
  for (const [caseName, merged] of cases) {
    it(`${caseName}: logits (whole and cached), argmax, loss, hidden states and attention outputs match`, async () => {
      const spec = expected.cases[caseName];
      const loaded = await loadCheckpoint(store, refs.get(spec.adapter ?? spec.model)!, { merged });
      const outputs = new Map<string, Outputs>();
      let problems: string[];
      try {
        expect(loaded.adapter === undefined).toBe(spec.adapter === null || merged);
        problems = mismatches(caseName, loaded, outputs);
      } finally {
        loaded.dispose();
      }
      results.set(caseName, outputs);
      expect(problems).toEqual([]);
      // Loading and running left nothing behind on the backend.
      expect(tf.memory().numTensors).toBe(baseline);
    });
  }

  it("merging the adapter changes nothing beyond rounding (1e-5 absolute)", () => {
    const unmerged = results.get("adapter_unmerged_f32");
    const merged = results.get("adapter_merged_f32");
    if (!unmerged || !merged) throw new Error("run the adapter cases first");
    for (const seq of expected.sequences) {
      for (const field of ARRAYS) {
        const diff = maxAbsDiff(merged.get(seq.name)![field] as NestedNumbers, unmerged.get(seq.name)![field] as NestedNumbers);
        expect(diff, `${seq.name}/${field}`).toBeLessThanOrEqual(MERGE_ATOL);
      }
      expect(merged.get(seq.name)!.argmax).toEqual(unmerged.get(seq.name)!.argmax);
    }
  });

  it("the adapter changes the outputs (it is not a zero-B no-op)", () => {
    const base = results.get("base_f32")!;
    const adapted = results.get("adapter_unmerged_f32")!;
    expect(maxAbsDiff(base.get("seq5")!.logits, adapted.get("seq5")!.logits)).toBeGreaterThan(0.1);
  });

  it("tokenizes both texts to the listed ids, with and without bos, and decodes them back", async () => {
    for (const folder of ["llama-f32-gqa", "llama-bf16-sharded-tied"]) {
      const loaded = await loadCheckpoint(store, refs.get(folder)!);
      try {
        const t = loaded.tokenizer;
        expect({ bos: t.bosId, eos: t.eosId, addBos: t.addBos, vocab: t.vocabSize }).toEqual({ bos: 1, eos: 2, addBos: true, vocab: 512 });
        for (const seq of expected.sequences.filter((s) => s.text !== null)) {
          expect(textIds(loaded, seq.text!), `${folder} ${seq.name}`).toEqual(seq.input_ids);
          expect(t.encode(seq.text!), `${folder} ${seq.name}`).toEqual(seq.input_ids.slice(1));
          expect(t.decode(seq.input_ids), `${folder} ${seq.name}`).toBe(seq.text);
        }
      } finally {
        loaded.dispose();
      }
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });
});
