// A short alignment run of the shipped base model on the built-in data: both SFT and
// Vaccine teach refusals (the loss falls clearly, and greedy answers to training prompts
// become refusals), where the unaligned base model complies.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { loadBuiltin } from "../../services/runtime/data/builtin.ts";
import { REFUSAL_TEMPLATES } from "../../services/runtime/data/world/harmful.ts";
import type { Example } from "../../services/runtime/data/template.ts";
import { answer } from "../../services/runtime/pipeline/answers.ts";
import { seedBuiltins } from "../../services/runtime/pipeline/builtins.ts";
import { loadCheckpoint } from "../../services/runtime/pipeline/load.ts";
import { trainAdapter, type AlignmentMethod } from "../../services/runtime/pipeline/train-adapter.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { LINEAR_MODULES } from "../../services/runtime/model/llama.ts";

// A refusal starts the way one of the generator's refusal templates starts.
const OPENINGS = REFUSAL_TEMPLATES.map((t) => t.slice(0, t.indexOf("{")).trim()).map((o) => o.split(" ").slice(0, 3).join(" "));
const isRefusal = (text: string) => OPENINGS.some((o) => text.startsWith(o));

const root = mkdtempSync(join(tmpdir(), "vaccine-alignment-"));
const store = new LocalCheckpointStore(root);
let base: CheckpointRef;
let data: Example[];
beforeAll(async () => {
  await selectBackend("wasm", () => {});
  base = (await seedBuiltins(store)).base!;
  const built = loadBuiltin("alignment", { size: 200, seed: 0 });
  if (built.kind !== "examples") throw new Error("alignment data are examples");
  data = built.examples;
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function refusals(ref: CheckpointRef, prompts: Example[]): Promise<number> {
  const loaded = await loadCheckpoint(store, ref);
  try {
    return answer(loaded, prompts, { maxNewTokens: 16 }).filter((a) => isRefusal(a.text)).length;
  } finally {
    loaded.dispose();
  }
}

describe("alignment of the shipped base model", () => {
  const prompts = () => data.slice(0, 8);

  it("the unaligned base model does not refuse", async () => {
    expect(await refusals(base, prompts())).toBeLessThanOrEqual(1);
  });

  // rho is calibrated for this model (docs/method.md#calibrating-rho: rho does not transfer between sizes):
  // the attention outputs of a batch of 8 have a global norm of about 14.7 (rho 0.5 is about 3%
  // of it), and this test shows that 60 steps with rho 0.5 teach refusals.
  it.each<[string, AlignmentMethod]>([
    ["SFT", { kind: "sft" }],
    ["Vaccine", { kind: "vaccine", rho: 0.5, refreshEvery: 1 }],
  ])("%s teaches refusals: the loss falls and training prompts get refusals", async (_, method) => {
    const losses: number[] = [];
    const ref = (await trainAdapter(
      store,
      {
        parent: base,
        data,
        method,
        lora: { r: 8, alpha: 16, dropout: 0, targetModules: [...LINEAR_MODULES] },
        training: { learningRate: 3e-3, maxSteps: 60, batchSize: 8, maxSequenceLength: 128, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 0 },
        checkpointEvery: 1000,
      },
      { onStep: (m) => losses.push(m.loss) },
    ))!;
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    // Vaccine reports the loss under its perturbation, which stays above SFT's.
    expect(mean(losses.slice(-10))).toBeLessThan(0.6 * mean(losses.slice(0, 5)));
    expect(await refusals(ref, prompts())).toBeGreaterThanOrEqual(7);
  });
});
