// The serving thread's cache of loaded checkpoints (pipeline/checkpoint-cache.ts) counts a
// model by what it takes loaded, float32, not by its files: a BF16 folder takes twice its
// bytes once loaded. A model over the budget is used and then disposed, never kept.
import * as tf from "@tensorflow/tfjs";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { CheckpointCache } from "../../services/runtime/pipeline/checkpoint-cache.ts";
import { KIND } from "../../services/runtime/pipeline/kinds.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";

const BF16 = join(import.meta.dirname, "../fixtures/llama-bf16-sharded-tied");
/** The fixture's weight files: 327,512 bytes of BF16 (about 654 KB as float32). */
const BETWEEN = 500_000;

describe("CheckpointCache", () => {
  let root: string;
  let store: LocalCheckpointStore;
  let ref: CheckpointRef;
  beforeAll(async () => {
    await selectBackend();
    root = mkdtempSync(join(tmpdir(), "vaccine-ckcache-"));
    store = new LocalCheckpointStore(root);
    ref = await store.put(BF16, { kind: KIND.model, meta: { name: "bf16" } });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** Tensors left after one use, over those before it. */
  async function leftAfterUse(cache: CheckpointCache): Promise<number> {
    const before = tf.memory().numTensors;
    const vocab = await cache.use(ref, (loaded) => loaded.model.config.vocabSize);
    expect(vocab).toBeGreaterThan(0);
    return tf.memory().numTensors - before;
  }

  it("disposes a BF16 model whose float32 weights exceed the budget, though its files fit", async () => {
    const cache = new CheckpointCache(store, BETWEEN);
    expect(await leftAfterUse(cache)).toBe(0);
    expect(await leftAfterUse(cache)).toBe(0);
  });

  it("keeps it within a budget its float32 weights fit", async () => {
    const cache = new CheckpointCache(store, 1_000_000);
    expect(await leftAfterUse(cache)).toBeGreaterThan(0);
    expect(await leftAfterUse(cache)).toBe(0); // served from the cache: nothing loaded again
  });

  it("leaves no tensors behind when an adapter over it cannot be read", async () => {
    const dir = join(root, "broken-adapter");
    mkdirSync(dir);
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 4 }));
    writeFileSync(join(dir, "adapter_model.safetensors"), "not safetensors");
    const broken = await store.put(dir, { kind: KIND.adapter, meta: { parent: ref } });
    const cache = new CheckpointCache(store, 0);
    const before = tf.memory().numTensors;
    await expect(cache.use(broken, () => 0)).rejects.toThrow(/adapter_config|safetensors/);
    expect(tf.memory().numTensors).toBe(before);
  });
});

