// Embedded mode: a training job runs in its own worker thread, so Embed stays responsive.
// Embed's p50 while a job trains stays within 2x of its p50 idle (a ratio in one process,
// with idle measured before and after the job so that a change of machine load between the
// two phases does not decide it). bench/embed-latency.ts records the figures.
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { seedBuiltins } from "../../services/runtime/pipeline/builtins.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

let suite: TestSuite;
let base: CheckpointRef;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let embed: ReturnType<typeof createClient<typeof EmbedService>>;
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  // The shipped base model: a real model shape for both Embed and the job.
  base = (await seedBuiltins(suite.deps.store)).base!;
  const transport = createGrpcTransport({ baseUrl: suite.server.url });
  align = createClient(AlignService, transport);
  embed = createClient(EmbedService, transport);
});
afterAll(() => suite.close());

async function embedTimes(n: number): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await embed.embed({ checkpoint: base, texts: TEXTS, includeFinalHidden: true, pooling: Pooling.MEAN });
    ms.push(performance.now() - t0);
  }
  return ms;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

describe("Embed while a job trains (embedded mode)", () => {
  it("keeps its p50 within 2x of idle", async () => {
    await embedTimes(10); // warm-up: the checkpoint loads into the cache
    const idleBefore = await embedTimes(40);
    const { job } = await align.createAlignJob({
      spec: {
        baseCheckpoint: base,
        dataset: { source: { case: "builtin", value: { name: "alignment", size: 200 } } },
        method: { case: "vaccine", value: { rho: 2 } },
        training: { maxSteps: 10_000, batchSize: 5, maxSequenceLength: 200, checkpointEvery: 10_000 },
      },
    });
    // Measured once the job's worker is training: after its first step.
    while (!((await align.getAlignJob({ jobId: job!.id })).job!.progress?.step ?? 0)) await new Promise((r) => setTimeout(r, 50));
    const busy = await embedTimes(80);
    const during = (await align.getAlignJob({ jobId: job!.id })).job!;
    // Still running: its worker computed a step through the whole measurement.
    expect(during.state).toBe(JobState.RUNNING);
    await align.cancelAlignJob({ jobId: job!.id });
    for await (const _ of align.watchAlignJob({ jobId: job!.id }));
    const idleAfter = await embedTimes(40);

    const idle = median([...idleBefore, ...idleAfter]);
    const ratio = median(busy) / idle;
    console.log(`Embed p50: idle ${idle.toFixed(1)} ms, during training ${median(busy).toFixed(1)} ms, ratio ${ratio.toFixed(2)} (job at step ${during.progress!.step})`);
    expect(ratio).toBeLessThan(2);
  });
});
