/**
 * Embed latency idle and while a training job runs, in embedded mode (no queue): the compiled
 * server (dist/) as deployed, on a temp store, the shipped base model for Embed and for a
 * Vaccine alignment job (batch 5 x 200, the reference's sizes). Clients 1 and 8 at once;
 * per phase p50/p90/p99 and requests/s, idle measured before and after the job.
 * Run: npm run build && npx tsx bench/embed-latency.ts   Writes bench/results/embed-latency.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AlignService } from "../gen/vaccine/v1/align_pb.ts";
import { EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { startProcess } from "../scripts/service-process.ts";
import { quantile } from "./stats.ts";

const startServer = () => startProcess("dist/services/main.js", { VACCINE_BACKEND: "wasm", VACCINE_SERVICES: "align,embed" });

const REQUESTS = Number(process.env.REQUESTS ?? 200);
const CLIENTS = [1, 8];
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];


/** REQUESTS Embed calls from `clients` concurrent callers. */
async function measure(embed: ReturnType<typeof createClient<typeof EmbedService>>, clients: number) {
  const base = builtinRef("base")!;
  const ms: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next++ < REQUESTS) {
        const s = performance.now();
        await embed.embed({ checkpoint: base, texts: TEXTS, includeFinalHidden: true, pooling: Pooling.MEAN });
        ms.push(performance.now() - s);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const r = (x: number) => Number(x.toFixed(1));
  return { p50Ms: r(quantile(ms, 0.5)), p90Ms: r(quantile(ms, 0.9)), p99Ms: r(quantile(ms, 0.99)), requestsPerSecond: r(ms.length / seconds) };
}

async function main(): Promise<void> {
  const server = await startServer();
  try {
    const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
    const embed = createClient(EmbedService, transport);
    const align = createClient(AlignService, transport);
    await measure(embed, 1); // warm-up: the checkpoint loads into the cache
    const idleBefore = Object.fromEntries(await sequential(CLIENTS.map((c) => async () => [c, await measure(embed, c)] as const)));
    const { job } = await align.createAlignJob({
      spec: {
        baseCheckpoint: builtinRef("base")!,
        dataset: { source: { case: "builtin", value: { name: "alignment", size: 200 } } },
        method: { case: "vaccine", value: { rho: 2 } },
        training: { maxSteps: 100_000, batchSize: 5, maxSequenceLength: 200, checkpointEvery: 100_000 },
      },
    });
    const jobId = job!.id;
    const stepOf = async () => (await align.getAlignJob({ jobId })).job!.progress?.step ?? 0;
    while ((await stepOf()) === 0) await new Promise((r) => setTimeout(r, 50));
    const stepsFrom = await stepOf();
    const t0 = performance.now();
    const during = Object.fromEntries(await sequential(CLIENTS.map((c) => async () => [c, await measure(embed, c)] as const)));
    const stepsPerSecond = Number((((await stepOf()) - stepsFrom) / ((performance.now() - t0) / 1000)).toFixed(2));
    await align.cancelAlignJob({ jobId });
    for await (const _ of align.watchAlignJob({ jobId }));
    const idleAfter = Object.fromEntries(await sequential(CLIENTS.map((c) => async () => [c, await measure(embed, c)] as const)));
    const ratio = (a: number, b: number) => Number((a / b).toFixed(2));
    const ratios = Object.fromEntries(
      CLIENTS.map((c) => [c, { toIdleBefore: ratio(during[c].p50Ms, idleBefore[c].p50Ms), toIdleAfter: ratio(during[c].p50Ms, idleAfter[c].p50Ms) }]),
    );
    const result = {
      date: new Date().toISOString(),
      mode: "embedded",
      node: process.version,
      cpus: os.cpus().length,
      loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
      requestsPerPhase: REQUESTS,
      embed: { checkpoint: "builtin base", texts: TEXTS.length },
      job: { method: "vaccine", batchSize: 5, maxSequenceLength: 200, stepsPerSecondDuringEmbedLoad: stepsPerSecond },
      byClients: Object.fromEntries(CLIENTS.map((c) => [c, { idleBefore: idleBefore[c], duringTraining: during[c], idleAfter: idleAfter[c], p50Ratio: ratios[c] }])),
    };
    console.log(JSON.stringify(result, null, 2));
    mkdirSync("bench/results", { recursive: true });
    writeFileSync("bench/results/embed-latency.json", JSON.stringify(result, null, 2) + "\n");
  } finally {
    await server.stop();
  }
}

async function sequential<T>(tasks: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = [];
  for (const t of tasks) out.push(await t());
  return out;
}

await main();
