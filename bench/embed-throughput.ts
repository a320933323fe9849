/**
 * Embed throughput under 24 concurrent clients, with batching across callers off
 * (VACCINE_BATCH_WINDOW_MS=0) and on (the default window): a real server (services/main.ts
 * through tsx, Embed only, wasm backend, a temp store) per run, each client on its own
 * HTTP/2 connection sending Embed calls back to back (3 texts, every layer and the final
 * hidden state, mean pooling, the shipped base model). Per run: requests/s, p50, p90, p99.
 * Runs alternate off, on, off, on... (ROUNDS=3) so that load from other processes falls on
 * both; the summary takes the median run of each mode.
 * Run: npx tsx bench/embed-throughput.ts   Writes bench/results/embed-throughput.json.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { DEFAULT_BATCH_WINDOW } from "../services/common/call-batcher.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { quantile, serve } from "./serve.ts";

const CLIENTS = 24;
/** An Embed-only server from source, batching with `windowMs`. */
const startServer = (root: string, windowMs: number) =>
  serve(["--import", "tsx", "services/main.ts"], {
    VACCINE_PORT: "0",
    VACCINE_BACKEND: "wasm",
    VACCINE_STORE_ROOT: join(root, "store"),
    VACCINE_JOBS_DIR: join(root, "jobs"),
    VACCINE_SERVICES: "embed",
    VACCINE_BATCH_WINDOW_MS: String(windowMs),
    VACCINE_RATE_LIMIT_RPS: "0",
  });

const REQUESTS = Number(process.env.REQUESTS ?? 720);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];

const r1 = (x: number) => Number(x.toFixed(1));

/** REQUESTS Embed calls from CLIENTS callers, each on its own connection. */
async function measure(port: number, requests: number) {
  const base = builtinRef("base")!;
  const clients = Array.from({ length: CLIENTS }, () => createClient(EmbedService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` })));
  const ms: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    clients.map(async (embed) => {
      while (next++ < requests) {
        const s = performance.now();
        await embed.embed({ checkpoint: base, texts: TEXTS, includeFinalHidden: true, pooling: Pooling.MEAN });
        ms.push(performance.now() - s);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { requestsPerSecond: r1(ms.length / seconds), p50Ms: r1(quantile(ms, 0.5)), p90Ms: r1(quantile(ms, 0.9)), p99Ms: r1(quantile(ms, 0.99)) };
}

async function run(windowMs: number) {
  const root = mkdtempSync(join(os.tmpdir(), "vaccine-embed-throughput-"));
  const server = await startServer(root, windowMs);
  try {
    await measure(server.port, 2 * CLIENTS); // warm-up: the checkpoint loads into the cache
    return { windowMs, loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))), ...(await measure(server.port, REQUESTS)) };
  } finally {
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const runs: Awaited<ReturnType<typeof run>>[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    for (const windowMs of [0, DEFAULT_BATCH_WINDOW.windowMs]) {
      const r = await run(windowMs);
      console.error(JSON.stringify(r));
      runs.push(r);
    }
  }
  const medianRun = (windowMs: number) => {
    const mine = runs.filter((r) => r.windowMs === windowMs).sort((a, b) => a.requestsPerSecond - b.requestsPerSecond);
    return mine[Math.floor((mine.length - 1) / 2)];
  };
  const off = medianRun(0);
  const on = medianRun(DEFAULT_BATCH_WINDOW.windowMs);
  const result = {
    benchmark: "embed-throughput",
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, node: process.version },
    clients: CLIENTS,
    requestsPerRun: REQUESTS,
    embed: { checkpoint: "builtin base", texts: TEXTS.length, layers: "all", final: true, pooling: "mean" },
    batching: { windowMs: DEFAULT_BATCH_WINDOW.windowMs, maxRows: DEFAULT_BATCH_WINDOW.maxRows },
    off,
    on,
    ratio: { requestsPerSecond: Number((on.requestsPerSecond / off.requestsPerSecond).toFixed(2)), p99: Number((on.p99Ms / off.p99Ms).toFixed(2)) },
    runs,
  };
  console.log(JSON.stringify(result, null, 2));
  mkdirSync("bench/results", { recursive: true });
  writeFileSync("bench/results/embed-throughput.json", JSON.stringify(result, null, 2) + "\n");
}

await main();
