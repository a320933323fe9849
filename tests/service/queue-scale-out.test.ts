// Scale-out acceptance: Redis, two `api` processes and two `worker` processes on one shared
// local store; six real training jobs created through both apis; one worker killed with
// SIGKILL mid-job (a replacement starts, as a Deployment would), then the other worker
// stopped with SIGTERM mid-job. Every job succeeds exactly once, the interrupted jobs'
// adapters equal uninterrupted runs' byte for byte, Watch on the other api sees every
// step, and both apis answer Get and List alike.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointKind, JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";
import { startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { tinyStore } from "../helpers/tiny-store.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-scale-out-"));
const processes: ServiceProcess[] = [];
let redis: TestRedis | undefined;
afterAll(async () => {
  for (const p of processes) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await Promise.all(processes.map((p) => p.exited));
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

const ENTRY = "dist/services/main.js";
const STEPS = 24;
const CHECKPOINT_EVERY = 4;

/** The job a worker process is training: the last one its log says it started. */
function runningOn(worker: ServiceProcess): string | undefined {
  const started = worker.log().split("\n").filter((l) => l.includes('"msg":"job started"'));
  return started.length ? (JSON.parse(started.at(-1)!) as { job: string }).job : undefined;
}

describe("scale-out on a Redis queue", () => {
  it("two apis, two workers, six jobs; a worker killed and another stopped mid-job", async () => {
    const t0 = Date.now();
    redis = await startRedis();
    const storeRoot = join(root, "store");
    const { store, base, data } = await tinyStore(storeRoot);

    const env = { VACCINE_QUEUE_URL: redis.url, VACCINE_STORE_ROOT: storeRoot, VACCINE_JOBS_DIR: join(root, "jobs"), VACCINE_BACKEND: "wasm", VACCINE_WORKER_LOCK_MS: "3000" };
    const startWorker = () => startProcess(ENTRY, { ...env, VACCINE_ROLE: "worker" }).then((p) => (processes.push(p), p));
    const startApi = () => startProcess(ENTRY, { ...env, VACCINE_ROLE: "api" }).then((p) => (processes.push(p), p));
    const [api1, api2, w1, w2] = await Promise.all([startApi(), startApi(), startWorker(), startWorker()]);
    const transport = (p: ServiceProcess) => createGrpcTransport({ baseUrl: `http://127.0.0.1:${p.port}` });
    const clients = [api1, api2].map((p) => createClient(AlignService, transport(p)));
    const startedAt = Date.now() - t0;
    // A worker answers health probes and nothing else.
    expect((await createClient(Health, transport(w1)).check({ service: "" })).status).toBe(ServingStatus.SERVING);
    await expect(createClient(AlignService, transport(w1)).listAlignJobs({})).rejects.toMatchObject({ code: Code.Unimplemented });

    // Two specs, three jobs each: same spec, same adapter bytes, however a run was interrupted.
    const spec = (i: number): MessageInitShape<typeof AlignSpecSchema> => ({
      baseCheckpoint: base,
      dataset: { source: { case: "uri", value: data } },
      method: i % 2 ? { case: "vaccine", value: { rho: 0.5 } } : { case: "sft", value: {} },
      lora: { rank: 4, alpha: 8, dropout: 0 },
      training: { maxSteps: STEPS, batchSize: 3, learningRate: 0.01, maxSequenceLength: 64, checkpointEvery: CHECKPOINT_EVERY },
    });
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await clients[i % 2].createAlignJob({ spec: spec(i) })).job!.id);

    // Each job is watched on the api that did not create it. The first job past its first
    // training state loses its worker to SIGKILL and a replacement worker starts; then the
    // surviving worker gets SIGTERM at a step of the next job it trains.
    let killed: { id: string; worker: ServiceProcess } | undefined;
    let stopped: { id: string; worker: ServiceProcess; at: number } | undefined;
    let replacement: Promise<ServiceProcess> | undefined;
    const watched = new Map<string, JobEvent[]>();
    const watches = ids.map(async (id, i) => {
      const events: JobEvent[] = [];
      watched.set(id, events);
      for await (const { event } of clients[(i + 1) % 2].watchAlignJob({ jobId: id })) {
        events.push(event!);
        const e = event!.event;
        if (e.case !== "step") continue;
        if (!killed && e.value.step === CHECKPOINT_EVERY + 1) {
          const worker = [w1, w2].find((w) => runningOn(w) === id)!;
          killed = { id, worker };
          worker.child.kill("SIGKILL");
          replacement = startWorker();
        } else if (killed && !stopped && id !== killed.id && e.value.step >= 2 && e.value.step <= STEPS - 8) {
          const worker = killed.worker === w1 ? w2 : w1;
          if (runningOn(worker) !== id) continue;
          stopped = { id, worker, at: Date.now() };
          worker.child.kill("SIGTERM");
        }
      }
    });
    await Promise.all(watches);
    await replacement;
    const doneAt = Date.now() - t0;
    expect(killed && stopped).toBeTruthy();
    expect((await killed!.worker.exited).signal).toBe("SIGKILL");
    // SIGTERM: the step finishes, the training state is written, the job is handed back, exit 0 within the grace period.
    const exit = await stopped!.worker.exited;
    expect(exit.code).toBe(0);
    expect(exit.at - stopped!.at).toBeLessThan(10_000);

    const logs = (id: string) => watched.get(id)!.flatMap((e) => (e.event.case === "log" ? [e.event.value.message] : []));
    for (const id of ids) {
      const events = watched.get(id)!;
      // One writer at a time: sequence numbers 1..n, no gaps, no duplicates.
      expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
      const finals = events.filter((e) => e.event.case === "stateChange" && [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED].includes(e.event.value.to));
      expect(finals.map((e) => e.event.case === "stateChange" && JobState[e.event.value.to])).toEqual(["SUCCEEDED"]);
      const results = events.filter((e) => e.event.case === "checkpointWritten" && e.event.value.kind === CheckpointKind.RESULT);
      expect(results).toHaveLength(1);
      const steps = events.flatMap((e) => (e.event.case === "step" ? [e.event.value.step] : []));
      expect([...new Set(steps)].sort((a, b) => a - b)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
      // Only the killed job repeats steps: those it ran after its last training state.
      if (id !== killed!.id) expect(steps, logs(id).join("\n")).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    }
    expect(logs(killed!.id).some((m) => /worker was lost mid-job/.test(m))).toBe(true);
    expect(logs(killed!.id).some((m) => m.startsWith(`resumed at step ${CHECKPOINT_EVERY} of ${STEPS}`))).toBe(true);
    expect(logs(stopped!.id).some((m) => /stopped at worker shutdown/.test(m))).toBe(true);
    expect(logs(stopped!.id).some((m) => /^resumed at step \d+ of/.test(m))).toBe(true);

    // A watch resumed from a sequence number (a client whose stream was cut) gets the rest.
    const seen = watched.get(killed!.id)!;
    const rest: number[] = [];
    for await (const { event } of clients[0].watchAlignJob({ jobId: killed!.id, afterSequence: seen.length - 3 })) rest.push(event!.sequence);
    expect(rest).toEqual(seen.slice(-3).map((e) => e.sequence));

    // Both apis answer alike.
    const [jobs1, jobs2] = await Promise.all(clients.map(async (c) => Promise.all(ids.map(async (id) => (await c.getAlignJob({ jobId: id })).job!))));
    expect(jobs1).toEqual(jobs2);
    expect(jobs1.every((j) => j.state === JobState.SUCCEEDED && j.result?.uri)).toBe(true);
    const [list1, list2] = await Promise.all(clients.map((c) => c.listAlignJobs({ pageSize: 10 })));
    expect(list1.jobs.map((j) => j.id)).toEqual([...ids].reverse());
    expect(list1.jobs).toEqual(list2.jobs);

    // Same spec, same adapter bytes: both interrupted jobs resumed exactly (each spec has
    // three jobs and at most two were interrupted, so at least one is a plain run).
    const adapter = async (uri: string, digest: string) => {
      const { dir } = await store.get({ uri, digest });
      return Object.fromEntries(readdirSync(dir).sort().map((f) => [f, readFileSync(join(dir, f)).toString("base64")]));
    };
    const bytes = await Promise.all(jobs1.map((j) => adapter(j.result!.uri, j.result!.digest)));
    expect(Object.keys(bytes[0]).length).toBeGreaterThan(0);
    for (const i of [2, 4]) expect(bytes[i]).toEqual(bytes[0]);
    for (const i of [3, 5]) expect(bytes[i]).toEqual(bytes[1]);
    expect(bytes[0]).not.toEqual(bytes[1]);

    console.log(`scale-out: 4 processes serving after ${startedAt} ms; 6 jobs done after ${doneAt} ms; SIGTERM'd worker exited in ${exit.at - stopped!.at} ms`);
    for (const p of processes) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGTERM");
    for (const p of processes) if (p !== killed!.worker) expect((await p.exited).code).toBe(0);
  });
});
