// Two processes on one local jobs folder without a queue: the first runs the jobs, the second
// says at start that it runs none (and why), refuses Create, answers from the records, and
// no job runs twice.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointKind, JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";
import { putExamples, putModel } from "../helpers/tiny-store.ts";
import { tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-lock-"));
const env = { VACCINE_STORE_ROOT: join(root, "store"), VACCINE_JOBS_DIR: join(root, "jobs"), VACCINE_SERVICES: "align", VACCINE_BACKEND: "wasm" };
const started: ServiceProcess[] = [];
afterAll(async () => {
  for (const p of started) p.child.kill("SIGTERM");
  await Promise.all(started.map((p) => p.exited));
  rmSync(root, { recursive: true, force: true });
});

const clientOf = (p: ServiceProcess) => createClient(AlignService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${p.port}` }));
const healthOf = (p: ServiceProcess) => createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${p.port}` }));
const statusOf = async (p: ServiceProcess, service: string) => (await healthOf(p).check({ service })).status;
async function events(client: ReturnType<typeof clientOf>, jobId: string): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const { event } of client.watchAlignJob({ jobId })) out.push(event!);
  return out;
}

describe("one executor per local jobs folder", () => {
  it("the second process refuses to run jobs and says why; every job runs once", async () => {
    const store = new LocalCheckpointStore(env.VACCINE_STORE_ROOT);
    const model = tinyWorldModel(tinyTokenizer());
    const base = await putModel(store, model);
    model.dispose();
    const data = "store://datasets/align.jsonl";
    await putExamples(store, data);
    const spec = {
      baseCheckpoint: base,
      dataset: { source: { case: "uri" as const, value: data } },
      method: { case: "sft" as const, value: {} },
      lora: { rank: 4, alpha: 8, dropout: 0 },
      training: { maxSteps: 12, batchSize: 3, learningRate: 0.01, maxSequenceLength: 64, checkpointEvery: 4 },
    };

    // The compiled build, as deployed (its training worker is plain JavaScript).
    const a = await startProcess("dist/services/main.js", env);
    started.push(a);
    const clientA = clientOf(a);
    const ids = [(await clientA.createAlignJob({ spec })).job!.id, (await clientA.createAlignJob({ spec })).job!.id];
    // One job running, one queued: what a second executor used to pick up and run again.
    while (!((await clientA.getAlignJob({ jobId: ids[0] })).job!.progress?.step ?? 0)) await new Promise((r) => setTimeout(r, 50));

    const b = await startProcess("dist/services/main.js", env);
    started.push(b);
    const warning = b
      .log()
      .split("\n")
      .filter((l) => l.includes("runs no training jobs"))
      .map((l) => JSON.parse(l))[0];
    expect(warning).toMatchObject({ level: "warn", holder_pid: a.child.pid, jobs_dir: env.VACCINE_JOBS_DIR });
    expect(warning.msg).toContain("VACCINE_QUEUE_URL");
    const clientB = clientOf(b);
    const refused = await rpcFailure(() => clientB.createAlignJob({ spec }));
    expect(refused.code).toBe(Code.FailedPrecondition);
    expect(refused.info).toMatchObject({ reason: "JOB_EXECUTOR_LOCKED", metadata: { holder_pid: String(a.child.pid) } });
    // A readiness probe of AlignService sends calls to A; the server itself is up.
    expect(await statusOf(b, AlignService.typeName)).toBe(ServingStatus.NOT_SERVING);
    expect(await statusOf(b, "")).toBe(ServingStatus.SERVING);
    expect(await statusOf(a, AlignService.typeName)).toBe(ServingStatus.SERVING);
    expect(b.log()).toContain(`job services NOT_SERVING: the executor takes no jobs (another process holds the jobs folder ${env.VACCINE_JOBS_DIR})`);

    // B reads the jobs A runs, live, to the end; A's and B's views agree.
    const [seenOnB, ...seenOnA] = await Promise.all([events(clientB, ids[1]), ...ids.map((id) => events(clientA, id))]);
    expect(seenOnB.map((e) => e.sequence)).toEqual(seenOnA[1].map((e) => e.sequence));
    for (const [i, history] of seenOnA.entries()) {
      const steps = history.flatMap((e) => (e.event.case === "step" ? [e.event.value.step] : []));
      expect(steps, ids[i]).toEqual(Array.from({ length: 12 }, (_, k) => k + 1));
      expect(history.map((e) => e.sequence)).toEqual(history.map((_, k) => k + 1));
      const results = history.filter((e) => e.event.case === "checkpointWritten" && e.event.value.kind === CheckpointKind.RESULT);
      expect(results).toHaveLength(1);
      const states = history.flatMap((e) => (e.event.case === "stateChange" ? [e.event.value.to] : []));
      expect(states).toEqual([JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]);
      expect((await clientB.getAlignJob({ jobId: ids[i] })).job!.state).toBe(JobState.SUCCEEDED);
    }
    expect((await clientB.listAlignJobs({})).jobs.map((j) => j.id).sort()).toEqual([...ids].sort());

    // A stops: B takes the lock over (it asks every 5 s) and runs jobs from then on.
    a.child.kill("SIGTERM");
    expect((await a.exited).code).toBe(0);
    let created: string | undefined;
    for (const until = Date.now() + 20_000; !created && Date.now() < until; await new Promise((r) => setTimeout(r, 250))) {
      created = await clientB.createAlignJob({ spec }).then((r) => r.job!.id, () => undefined);
    }
    expect(created).toBeDefined();
    expect(b.log()).toContain("took over the jobs folder's lock: this process runs its jobs now");
    expect(await statusOf(b, AlignService.typeName)).toBe(ServingStatus.SERVING);
    const states = (await events(clientB, created!)).flatMap((e) => (e.event.case === "stateChange" ? [e.event.value.to] : []));
    expect(states).toEqual([JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]);
  });
});
