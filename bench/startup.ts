/**
 * Start-to-SERVING time of the four services in one process: from spawning `node` to the
 * first grpc.health.v1 Check that answers SERVING, for the compiled build (dist/, what the
 * bin and the image run) and for the TypeScript sources through tsx (npm run dev). Median of
 * RUNS cold starts each, alternating, on temp stores. Run: npm run build && npx tsx bench/startup.ts
 * Writes bench/results/startup.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../gen/grpc/health/v1/health_pb.ts";
import { startProcess } from "../scripts/service-process.ts";

const RUNS = Number(process.env.RUNS ?? 7);
const MODES = { compiled: "dist/services/main.js", tsx: "services/main.ts" } as const;

async function startOnce(entry: string): Promise<number> {
  const t0 = performance.now();
  const server = await startProcess(entry, { VACCINE_LOG_LEVEL: "info" });
  try {
    const port = server.port;
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    for (;;) {
      const res = await health.check({ service: "" }).catch(() => undefined);
      if (res?.status === Serving.SERVING) return performance.now() - t0;
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    await server.stop();
  }
}

const samples: Record<string, number[]> = { compiled: [], tsx: [] };
for (let i = 0; i < RUNS; i++) {
  for (const [mode, entry] of Object.entries(MODES)) samples[mode].push(await startOnce(entry));
}
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { median_ms: Math.round(s[s.length >> 1]), min_ms: Math.round(s[0]), max_ms: Math.round(s.at(-1)!), samples_ms: xs.map(Math.round) };
};
const result = {
  bench: "startup",
  what: "spawn to first SERVING health check, all four services in one process, fresh temp store",
  runs: RUNS,
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, load_average_1m: os.loadavg()[0] },
  compiled: stats(samples.compiled),
  tsx: stats(samples.tsx),
};
mkdirSync("bench/results", { recursive: true });
writeFileSync("bench/results/startup.json", JSON.stringify(result, null, 2) + "\n");
console.log(JSON.stringify({ compiled: result.compiled.median_ms, tsx: result.tsx.median_ms }));
