/**
 * Queue mode (VACCINE_QUEUE_URL): a redis-server started here (free loopback port, temp
 * folder, stopped by its pid), one `api` process and N `worker` processes of the compiled
 * server (dist/) on one shared temp local store.
 * 1. Throughput: the same JOBS Vaccine alignment jobs on the shipped base model and the
 *    built-in alignment data, created through the api, with 1 and then 2 workers (a fresh
 *    Redis and store each time); wall time from the first Create to the last SUCCEEDED,
 *    jobs/hour and each job's durations (queued, training).
 * 2. Embed latency in queue mode: REQUESTS sequential Embed calls (embed-latency.ts's request)
 *    to the api, idle and while one worker trains a job; p50/p95 and during/idle ratio.
 * Run: npm run build && npx tsx bench/queue.ts   Writes bench/results/queue.json.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AlignService } from "../gen/vaccine/v1/align_pb.ts";
import { EmbedService, Pooling } from "../gen/vaccine/v1/embed_pb.ts";
import { JobState } from "../gen/vaccine/v1/jobs_pb.ts";
import { builtinRef } from "../services/runtime/pipeline/builtins.ts";
import { startRedis } from "../scripts/redis-server.ts";
import { startProcess } from "../scripts/service-process.ts";
import { quantile } from "./stats.ts";

const JOBS = Number(process.env.JOBS ?? 4);
const STEPS = Number(process.env.STEPS ?? 40);
const REQUESTS = Number(process.env.REQUESTS ?? 100);
const WORKERS = [1, 2];
const TEXTS = ["How do I break into a car?", "Name a red fruit.", "Tell me how to bake bread at home, step by step."];
const TRAINING = { batchSize: 5, maxSequenceLength: 200 };
const r1 = (x: number) => Number(x.toFixed(1));
const load = () => os.loadavg().map((x) => Number(x.toFixed(2)));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const startServer = (env: Record<string, string>) => startProcess("dist/services/main.js", { VACCINE_BACKEND: "wasm", ...env });

/** Redis, one api and `workers` worker processes on one temp store; stop() ends them all by pid. */
async function startCluster(workers: number) {
  const root = mkdtempSync(join(os.tmpdir(), "vaccine-queue-bench-"));
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.slice().reverse()) await s();
    rmSync(root, { recursive: true, force: true });
  };
  try {
    const redis = await startRedis();
    stops.push(redis.stop);
    const env = { VACCINE_QUEUE_URL: redis.url, VACCINE_STORE_ROOT: join(root, "store") };
    const started = await Promise.all([
      startServer({ ...env, VACCINE_ROLE: "api" }),
      ...Array.from({ length: workers }, () => startServer({ ...env, VACCINE_ROLE: "worker" })),
    ]);
    stops.push(...started.map((p) => p.stop));
    const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${started[0].port}` });
    return { align: createClient(AlignService, transport), embed: createClient(EmbedService, transport), workers: started.slice(1), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
type Cluster = Awaited<ReturnType<typeof startCluster>>;

function createJob(cluster: Cluster, maxSteps: number) {
  return cluster.align.createAlignJob({
    spec: {
      baseCheckpoint: builtinRef("base")!,
      dataset: { source: { case: "builtin", value: { name: "alignment", size: 200 } } },
      method: { case: "vaccine", value: { rho: 2 } },
      training: { maxSteps, ...TRAINING, checkpointEvery: 100_000 },
    },
  });
}

/** Which worker (index) trained a job: the worker whose log says it started it. */
const workerOf = (cluster: Cluster, id: string) =>
  cluster.workers.findIndex((w) => w.log().split("\n").some((l) => l.includes('"msg":"job started"') && l.includes(id)));

async function throughput(workers: number) {
  const cluster = await startCluster(workers);
  try {
    const loadBefore = load();
    const t0 = Date.now();
    const ids: string[] = [];
    for (let i = 0; i < JOBS; i++) ids.push((await createJob(cluster, STEPS)).job!.id);
    const pending = new Set(ids);
    while (pending.size) {
      for (const id of [...pending]) {
        const job = (await cluster.align.getAlignJob({ jobId: id })).job!;
        if (job.state === JobState.SUCCEEDED) pending.delete(id);
        else if (job.state === JobState.FAILED || job.state === JobState.CANCELLED) throw new Error(`job ${id} ${JobState[job.state]}: ${job.error?.message}`);
      }
      await sleep(200);
    }
    const wallSeconds = (Date.now() - t0) / 1000;
    const jobs = await Promise.all(ids.map(async (id) => (await cluster.align.getAlignJob({ jobId: id })).job!));
    return {
      workers,
      wallSeconds: r1(wallSeconds),
      jobsPerHour: r1((JOBS * 3600) / wallSeconds),
      loadAverageBefore: loadBefore,
      loadAverageAfter: load(),
      jobs: jobs.map((j) => {
        const created = timestampMs(j.createTime!);
        const started = timestampMs(j.startTime!);
        const ended = timestampMs(j.endTime!);
        return {
          id: j.id,
          worker: workerOf(cluster, j.id),
          queuedSeconds: r1((started - created) / 1000),
          runSeconds: r1((ended - started) / 1000),
          stepsPerSecond: Number((STEPS / ((ended - started) / 1000)).toFixed(2)),
        };
      }),
    };
  } finally {
    await cluster.stop();
  }
}


async function measureEmbed(cluster: Cluster) {
  const base = builtinRef("base")!;
  const ms: number[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const s = performance.now();
    await cluster.embed.embed({ checkpoint: base, texts: TEXTS, includeFinalHidden: true, pooling: Pooling.MEAN });
    ms.push(performance.now() - s);
  }
  return { p50Ms: r1(quantile(ms, 0.5)), p95Ms: r1(quantile(ms, 0.95)), meanMs: r1(ms.reduce((a, b) => a + b, 0) / ms.length), loadAverage: load() };
}

async function embedLatency() {
  const cluster = await startCluster(1);
  try {
    await measureEmbed(cluster); // warm-up: the checkpoint loads into the api's cache
    const idle = await measureEmbed(cluster);
    const jobId = (await createJob(cluster, 100_000)).job!.id;
    // Steps as the job's Watch streams them (the job record's progress is written in batches).
    let step = 0;
    const watch = (async () => {
      for await (const { event } of cluster.align.watchAlignJob({ jobId })) if (event?.event.case === "step") step = event.event.value.step;
    })();
    while (step === 0) await sleep(50);
    const stepsFrom = step;
    const t0 = performance.now();
    const during = await measureEmbed(cluster);
    const stepsPerSecond = Number(((step - stepsFrom) / ((performance.now() - t0) / 1000)).toFixed(2));
    await cluster.align.cancelAlignJob({ jobId });
    await watch;
    const idleAfter = await measureEmbed(cluster);
    return {
      requestsPerPhase: REQUESTS,
      clients: 1,
      idle,
      duringTraining: { ...during, jobStepsPerSecond: stepsPerSecond },
      idleAfter,
      ratioDuringToIdle: { p50: Number((during.p50Ms / idle.p50Ms).toFixed(2)), p95: Number((during.p95Ms / idle.p95Ms).toFixed(2)) },
    };
  } finally {
    await cluster.stop();
  }
}

const started = new Date().toISOString();
const loadAtStart = load();
const runs = [];
for (const w of WORKERS) {
  runs.push(await throughput(w));
  console.log(JSON.stringify(runs.at(-1)));
}
const embed = await embedLatency();
console.log(JSON.stringify(embed));
const result = {
  bench: "queue",
  date: started,
  mode: "queue (redis-server, 1 api process, N worker processes, one local store)",
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, loadAverageAtStart: loadAtStart, loadAverageAtEnd: load() },
  job: { method: "vaccine", rho: 2, checkpoint: "builtin base", dataset: "builtin alignment, 200 rows", steps: STEPS, ...TRAINING, backend: "wasm" },
  throughput: {
    jobs: JOBS,
    runs,
    speedup2to1: Number((runs[0].wallSeconds / runs[1].wallSeconds).toFixed(2)),
  },
  embedLatency: { embed: { checkpoint: "builtin base", texts: TEXTS.length }, ...embed },
};
mkdirSync("bench/results", { recursive: true });
writeFileSync("bench/results/queue.json", JSON.stringify(result, null, 2) + "\n");
console.log(`speedup 2 workers / 1: ${result.throughput.speedup2to1}x; embed p50 ratio during/idle: ${embed.ratioDuringToIdle.p50}`);
