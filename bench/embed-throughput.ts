/**
 * Embed throughput under 24 concurrent clients, with batching across callers off
 * (VACCINE_BATCH_WINDOW_MS=0) and on (the default window): a real server (services/main.ts
 * through tsx, Embed only, wasm backend, a temp store) per run, loaded by h2load (Debian's
 * nghttp2-client: apt-get install nghttp2-client) with 24 HTTP/2 connections sending the same
 * Embed call back to back (3 texts, every layer and the final hidden state, mean pooling, the
 * shipped base model). h2load is C and light, so the server, not the load generator, sets
 * the rate on 2 cores (24 Node clients took most of a core). Every response is checked: a
 * gRPC error has no message, so the DATA bytes received must be exactly one reply per call.
 * Per run: requests/s, p50, p90, p99. Runs alternate off, on, off, on... (ROUNDS=3) so that
 * load from other processes falls on both; the summary takes the median run of each mode.
 * Run: npx tsx bench/embed-throughput.ts   Writes bench/results/embed-throughput.json.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EmbedRequestSchema, EmbedResponseSchema, EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { DEFAULT_BATCH_WINDOW } from "../services/common/call-batcher.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { startProcess } from "../scripts/service-process.ts";
import { quantile } from "./stats.ts";

const CLIENTS = 24;
/** An Embed-only server from source, batching with `windowMs`. */
const startServer = (windowMs: number) =>
  startProcess("services/main.ts", {
    VACCINE_BACKEND: "wasm",
    VACCINE_SERVICES: "embed",
    VACCINE_BATCH_WINDOW_MS: String(windowMs),
    VACCINE_RATE_LIMIT_RPS: "0",
  });

const REQUESTS = Number(process.env.REQUESTS ?? 1440);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];

const r1 = (x: number) => Number(x.toFixed(1));

const request = () => create(EmbedRequestSchema, { checkpoint: builtinRef("base")!, texts: TEXTS, includeFinalHidden: true, pooling: Pooling.MEAN });

/** The call as gRPC frames it: a flag byte, a big-endian length, the message. */
function grpcFrame(message: Uint8Array): Uint8Array {
  const frame = new Uint8Array(5 + message.length);
  new DataView(frame.buffer).setUint32(1, message.length);
  frame.set(message, 5);
  return frame;
}

/** `requests` Embed calls from CLIENTS h2load connections; fails unless every call got its reply. */
async function measure(port: number, requests: number, dir: string) {
  // One call through a real client: the reply's size, and proof that the call succeeds.
  const reply = await createClient(EmbedService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` })).embed(request());
  const replyBytes = 5 + toBinary(EmbedResponseSchema, reply).length;
  const body = join(dir, "embed.bin");
  const log = join(dir, "h2load.log");
  writeFileSync(body, grpcFrame(toBinary(EmbedRequestSchema, request())));
  const h2 = spawnSync("h2load", ["-n", String(requests), "-c", String(CLIENTS), "-m", "1", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body, "--log-file", log, `http://127.0.0.1:${port}/vaccine.v1.EmbedService/Embed`], { encoding: "utf8" });
  if (h2.error) throw new Error(`h2load: ${h2.error.message} (apt-get install nghttp2-client)`);
  const out = h2.stdout;
  const perSecond = Number(/finished in [^,]+, ([\d.]+) req\/s/.exec(out)?.[1]);
  const data = Number(/\((\d+)\) data/.exec(out)?.[1]);
  const ok = Number(/(\d+) succeeded/.exec(out)?.[1]);
  if (ok !== requests || data !== requests * replyBytes) throw new Error(`h2load: ${ok} of ${requests} calls answered, ${data} data bytes for ${requests} x ${replyBytes}:\n${out}`);
  const ms = readFileSync(log, "utf8").trim().split("\n").map((line) => Number(line.split("\t")[2]) / 1000);
  return { requestsPerSecond: r1(perSecond), p50Ms: r1(quantile(ms, 0.5)), p90Ms: r1(quantile(ms, 0.9)), p99Ms: r1(quantile(ms, 0.99)) };
}

async function run(windowMs: number) {
  const root = mkdtempSync(join(os.tmpdir(), "vaccine-embed-throughput-"));
  const server = await startServer(windowMs);
  try {
    await measure(server.port, 4 * CLIENTS, root); // warm-up: the checkpoint loads into the cache
    return { windowMs, loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))), ...(await measure(server.port, REQUESTS, root)) };
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
    loadGenerator: spawnSync("h2load", ["--version"], { encoding: "utf8" }).stdout.trim(),
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
