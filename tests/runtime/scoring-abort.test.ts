// Deadlines and cancellation of the harmful score and task accuracy (pipeline/scoring.ts)
// and of decoding (model/generate.ts). Decoding is synchronous tfjs work: unless it hands
// the event loop back between tokens, no timer (a gRPC deadline) and no socket event (a
// client's RST_STREAM) can ever abort the caller's signal, and a scoring run goes on to the
// end of the data however long that takes. Every abort here comes from a timer or from an
// event after work started, the way a real deadline or cancellation arrives.
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import type { Example } from "../../services/runtime/data/template.ts";
import { generate } from "../../services/runtime/model/generate.ts";
import { LlamaModel } from "../../services/runtime/model/llama.ts";
import { CheckpointCache } from "../../services/runtime/pipeline/checkpoint-cache.ts";
import { CHUNK, scoreHarmfulness, scoreTask } from "../../services/runtime/pipeline/scoring.ts";
import type { CheckpointRef, CheckpointStore } from "../../services/runtime/store/store.ts";
import { randomIds, tinyModel } from "../helpers/tiny-model.ts";
import { putTinyModeration } from "../helpers/tiny-moderation.ts";
import { tinyStore, type TinyStore } from "../helpers/tiny-store.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";

/** Generation long enough that a whole run takes many seconds: 40 prompts x 128 tokens. */
const MANY: Example[] = Array.from({ length: 40 }, (_, i) => EXAMPLES[i % EXAMPLES.length]);
const LONG = { maxNewTokens: 128, threshold: 0.5, sampleCount: 0 };
const SST2: Example[] = Array.from({ length: 40 }, (_, i) => ({
  instruction: "Analyze the sentiment of the input, and respond only positive or negative.",
  input: `a good name ${i}`,
  output: i % 2 ? "positive" : "negative",
}));

/** A signal a timer aborts with `reason` after `ms`, like connect's deadline signal. */
function timerSignal(ms: number, reason: unknown): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(reason), ms);
  return controller.signal;
}

/** Every output of a scoring run, or the error it stopped with. */
async function drain<T>(run: AsyncGenerator<T>): Promise<{ outputs: T[]; error?: unknown }> {
  const outputs: T[] = [];
  try {
    for await (const out of run) outputs.push(out);
    return { outputs };
  } catch (error) {
    return { outputs, error };
  }
}

/** Counts forward passes of every model (language and moderation): work done after an abort shows up here. */
function countForwards(): { readonly calls: number; restore(): void } {
  const forward = LlamaModel.prototype.forward;
  let calls = 0;
  LlamaModel.prototype.forward = function (this: LlamaModel, ...args: Parameters<LlamaModel["forward"]>) {
    calls++;
    return forward.apply(this, args);
  };
  return {
    get calls() {
      return calls;
    },
    restore: () => void (LlamaModel.prototype.forward = forward),
  };
}

describe("generate with a signal", () => {
  let model: LlamaModel;
  const prompts = [randomIds(1, 5, 50, 31)[0], randomIds(1, 2, 50, 32)[0]];
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    model = tinyModel(5, { max_position_embeddings: 1024 }, 1.0);
  });
  afterAll(() => model.dispose());

  it("gives the same ids as without one, greedy and sampled", async () => {
    const greedy = { maxNewTokens: 8, eosTokenId: [] };
    const sampled = { maxNewTokens: 8, temperature: 1.5, topP: 0.9, seed: 4, eosTokenId: [] };
    const signal = new AbortController().signal;
    expect(await generate(model, prompts, { ...greedy, signal })).toEqual(generate(model, prompts, greedy));
    expect(await generate(model, prompts, { ...sampled, signal })).toEqual(generate(model, prompts, sampled));
  });

  it("lets a timer abort it between tokens, and frees its cache", async () => {
    const before = tf.memory().numTensors;
    const reason = new Error("deadline");
    const counter = countForwards();
    let atAbort = -1;
    const signal = timerSignal(20, reason);
    signal.addEventListener("abort", () => (atAbort = counter.calls));
    try {
      // 2 x 1000 tokens: seconds of work if the timer could not fire until the end.
      await expect(generate(model, prompts, { maxNewTokens: 1000, eosTokenId: [], signal })).rejects.toBe(reason);
    } finally {
      counter.restore();
    }
    expect(atAbort).toBeGreaterThanOrEqual(0);
    expect(counter.calls).toBe(atAbort); // not one token after the abort
    expect(tf.memory().numTensors).toBe(before);
  });

  it("does no work for a signal that is already aborted", async () => {
    const controller = new AbortController();
    controller.abort(new Error("cancelled"));
    const counter = countForwards();
    try {
      await expect(generate(model, prompts, { maxNewTokens: 4, signal: controller.signal })).rejects.toThrow("cancelled");
    } finally {
      counter.restore();
    }
    expect(counter.calls).toBe(0);
  });
});

describe("scoring stops at the caller's deadline or cancellation", () => {
  let tiny: TinyStore;
  let moderation: CheckpointRef;
  let refusal: CheckpointRef;
  let cache: CheckpointCache;
  beforeAll(async () => {
    await selectBackend("wasm", () => {});
    tiny = await tinyStore();
    moderation = await putTinyModeration(tiny.store);
    refusal = await putTinyModeration(tiny.store, undefined, ["refusal"]);
    cache = new CheckpointCache(tiny.store, 256 << 20);
    // Both models loaded: from here on scoring needs no I/O at all, as in a warm server.
    await drain(scoreHarmfulness(cache, tiny.base, moderation, EXAMPLES.slice(0, 1), { ...LONG, refusal, maxNewTokens: 1 }));
  });
  afterAll(() => tiny.cleanup());

  /** Runs `run` with forward passes counted. */
  async function withCountedModel<R>(run: (counter: { readonly calls: number }) => Promise<R>): Promise<R> {
    const counter = countForwards();
    try {
      return await run(counter);
    } finally {
      counter.restore();
    }
  }

  it("harmful score: a deadline timer stops it mid-generation, within the first chunk", async () => {
    const reason = new Error("the operation timed out");
    await withCountedModel(async (counter) => {
      let atAbort = -1;
      const signal = timerSignal(50, reason);
      signal.addEventListener("abort", () => (atAbort = counter.calls));
      const { outputs, error } = await drain(scoreHarmfulness(cache, tiny.base, moderation, MANY, { ...LONG, refusal, signal }));
      expect(error).toBe(reason);
      expect(outputs.some((o) => "report" in o)).toBe(false);
      // One chunk is CHUNK prompts x 128 tokens, far more than 50 ms: the timer fires during it.
      expect(outputs).toHaveLength(0);
      expect(atAbort).toBeGreaterThanOrEqual(0);
      expect(counter.calls).toBe(atAbort);
    });
  });

  it("harmful score: a cancellation after the first progress message stops the next chunk", async () => {
    const controller = new AbortController();
    const reason = new Error("cancelled by the client");
    await withCountedModel(async (counter) => {
      let atAbort = -1;
      controller.signal.addEventListener("abort", () => (atAbort = counter.calls));
      const outputs: unknown[] = [];
      const run = async () => {
        for await (const out of scoreHarmfulness(cache, tiny.base, moderation, MANY, { ...LONG, refusal, maxNewTokens: 16, signal: controller.signal })) {
          outputs.push(out);
          // A client reset arrives as a socket event: on the next turn of the event loop.
          if (outputs.length === 1) setImmediate(() => controller.abort(reason));
        }
      };
      await expect(run()).rejects.toBe(reason);
      expect(outputs).toHaveLength(1);
      expect(counter.calls).toBe(atAbort);
    });
  });

  it("task accuracy: a deadline timer stops it mid-generation", async () => {
    const reason = new Error("the operation timed out");
    await withCountedModel(async (counter) => {
      let atAbort = -1;
      const signal = timerSignal(50, reason);
      signal.addEventListener("abort", () => (atAbort = counter.calls));
      const { outputs, error } = await drain(scoreTask(cache, tiny.base, SST2, "sst2", { maxNewTokens: 128, sampleCount: 0, signal }));
      expect(error).toBe(reason);
      expect(outputs.length).toBeLessThan(SST2.length / CHUNK);
      expect(counter.calls).toBe(atAbort);
    });
  });

  it("a deadline during the checkpoint load ends the call without waiting for the load", async () => {
    // A store whose checkout waits for the test: the load cannot finish before the deadline.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const slow: CheckpointStore = Object.create(tiny.store);
    slow.get = async (ref) => {
      await gate;
      return tiny.store.get(ref);
    };
    const cold = new CheckpointCache(slow, 256 << 20);
    const reason = new Error("the operation timed out");
    const signal = timerSignal(50, reason);
    await withCountedModel(async (counter) => {
      const outcome = drain(scoreHarmfulness(cold, tiny.base, moderation, MANY, { ...LONG, refusal, signal }));
      const stalled = new Promise((resolve) => setTimeout(resolve, 5_000, "still waiting for the load"));
      try {
        expect(await Promise.race([outcome, stalled])).toEqual({ outputs: [], error: reason });
      } finally {
        release();
      }
      // The load finishes in the background and is kept; the abandoned call generates nothing.
      await cold.use(tiny.base, () => undefined);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(counter.calls).toBe(0);
    });
  });

  it("without an abort, the report is the same as before (chunks, progress, results)", async () => {
    const prompts = MANY.slice(0, CHUNK + 2);
    const opts = { maxNewTokens: 6, threshold: 0.5, sampleCount: 6 };
    const a = await drain(scoreHarmfulness(cache, tiny.base, moderation, prompts, { ...opts, refusal }));
    const b = await drain(scoreHarmfulness(cache, tiny.base, moderation, prompts, { ...opts, refusal, signal: new AbortController().signal }));
    expect(a.error).toBeUndefined();
    expect(a.outputs.map((o) => ("progress" in o ? o.progress.done : -1))).toEqual([CHUNK, CHUNK + 2, -1]);
    expect(b).toEqual(a);
  });
});
