/**
 * What one heavy Embed call costs the other calls of a process: the p50 / p99 of a small Embed
 * (3 texts, one client, one call after another) idle and while HEAVY clients each call Embed
 * again and again with 200 texts of about 60 tokens (13 forward passes of the shipped base
 * model). The compiled server (dist/) alone in its process, as deployed.
 * Run: npm run build && npx tsx bench/heavy-embed.ts   Writes bench/results/heavy-embed.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { startProcess } from "../scripts/service-process.ts";
import { latencies, timedCalls } from "./stats.ts";

const HEAVY = Number(process.env.HEAVY ?? 2);
const CALLS = Number(process.env.CALLS ?? 100);
const SMALL = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];
const LARGE = Array.from({ length: 200 }, (_, i) => `${"Tell me how to bake bread at home, step by step. ".repeat(6)}${i}`);

async function phase(port: number, heavy: number) {
  const client = () => createClient(EmbedService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
  const base = builtinRef("base")!;
  let stop = false;
  const heavyMs: number[] = [];
  const load = Array.from({ length: heavy }, async () => {
    const c = client();
    while (!stop) {
      const s = performance.now();
      await c.embed({ checkpoint: base, texts: LARGE, pooling: Pooling.MEAN });
      heavyMs.push(performance.now() - s);
    }
  });
  await new Promise((r) => setTimeout(r, heavy ? 1000 : 0));
  const small = client();
  const ms = await timedCalls(CALLS, () => small.embed({ checkpoint: base, texts: SMALL, pooling: Pooling.MEAN }));
  stop = true;
  await Promise.all(load);
  return { small: latencies(ms), ...(heavy ? { heavy: latencies(heavyMs) } : {}) };
}

async function main(): Promise<void> {
  const server = await startProcess("dist/services/main.js", { VACCINE_BACKEND: "wasm", VACCINE_SERVICES: "embed", VACCINE_RATE_LIMIT_RPS: "0" });
  try {
    await phase(server.port, 1); // warm-up
    const result = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: os.cpus().length,
      loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
      heavyClients: HEAVY,
      heavyCall: { texts: LARGE.length, checkpoint: "builtin base" },
      idle: await phase(server.port, 0),
      whileHeavy: await phase(server.port, HEAVY),
    };
    console.log(JSON.stringify(result, null, 2));
    mkdirSync("bench/results", { recursive: true });
    writeFileSync("bench/results/heavy-embed.json", JSON.stringify(result, null, 2) + "\n");
  } finally {
    await server.stop();
  }
}

await main();
