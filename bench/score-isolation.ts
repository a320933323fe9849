/**
 * What concurrent Score calls cost the other calls of a process: Embed latency (1 client,
 * sequential) idle and while SCORERS clients each call Generate again and again (16 prompts x
 * 64 new tokens on the shipped base model), per VACCINE_INFERENCE_CONCURRENCY (the bound on
 * decoding calls at once; 256 stands for no bound). Also Generate's own latency and the
 * prompts decoded per second, which one serving thread bounds whatever the setting.
 * The compiled server (dist/) alone in its process, as deployed.
 * Run: npm run build && npx tsx bench/score-isolation.ts   Writes bench/results/score-isolation.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { ScoreService } from "../gen/vaccine/v1/score_pb.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { startProcess } from "../scripts/service-process.ts";
import { latencies, timedCalls } from "./stats.ts";

const SETTINGS = (process.env.SETTINGS ?? "256,2,1").split(",").map(Number);
const SCORERS = Number(process.env.SCORERS ?? 32);
const EMBEDS = Number(process.env.EMBEDS ?? 100);
const PROMPTS = Array.from({ length: 16 }, (_, i) => ({ instruction: `Tell me about item ${i} in a few words.` }));
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];

const r1 = (x: number) => Number(x.toFixed(1));

async function phase(port: number, scorers: number) {
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
  const embed = createClient(EmbedService, transport);
  const score = createClient(ScoreService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
  const base = builtinRef("base")!;
  let stop = false;
  const generateMs: number[] = [];
  let prompts = 0;
  const t0 = performance.now();
  const load = Array.from({ length: scorers }, async () => {
    while (!stop) {
      const s = performance.now();
      await score.generate({ checkpoint: base, prompts: PROMPTS, maxNewTokens: 64 });
      generateMs.push(performance.now() - s);
      prompts += PROMPTS.length;
    }
  });
  // Every scorer's first call is under way before Embed is measured.
  await new Promise((r) => setTimeout(r, scorers ? 2000 : 0));
  const embedMs = await timedCalls(EMBEDS, () => embed.embed({ checkpoint: base, texts: TEXTS, pooling: Pooling.MEAN }));
  stop = true;
  await Promise.all(load);
  const seconds = (performance.now() - t0) / 1000;
  return { embed: latencies(embedMs), ...(scorers ? { generate: latencies(generateMs), promptsPerSecond: r1(prompts / seconds) } : {}) };
}

async function main(): Promise<void> {
  const runs: Record<string, unknown> = {};
  for (const limit of SETTINGS) {
    const server = await startProcess("dist/services/main.js", { VACCINE_BACKEND: "wasm", VACCINE_SERVICES: "score,embed", VACCINE_INFERENCE_CONCURRENCY: String(limit), VACCINE_RATE_LIMIT_RPS: "0" });
    try {
      await phase(server.port, 1); // warm-up: the model loads, V8 compiles the decoding
      runs[limit] = { idle: await phase(server.port, 0), whileScoring: await phase(server.port, SCORERS) };
      console.log(limit, JSON.stringify(runs[limit]));
    } finally {
      await server.stop();
    }
  }
  const result = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
    scorers: SCORERS,
    generate: { checkpoint: "builtin base", prompts: PROMPTS.length, maxNewTokens: 64 },
    embed: { checkpoint: "builtin base", texts: TEXTS.length, calls: EMBEDS },
    byScoreConcurrency: runs,
  };
  console.log(JSON.stringify(result, null, 2));
  mkdirSync("bench/results", { recursive: true });
  writeFileSync("bench/results/score-isolation.json", JSON.stringify(result, null, 2) + "\n");
}

await main();
