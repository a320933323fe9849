// A service process stopped by SIGTERM mid-training checkpoints its job and, started again,
// resumes it from that checkpoint to the end, even under a lower VACCINE_MAX_STEPS.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { startProcess } from "../../scripts/service-process.ts";
import { tinyStore } from "../helpers/tiny-store.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-restart-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const env = { VACCINE_STORE_ROOT: join(root, "store"), VACCINE_JOBS_DIR: join(root, "jobs"), VACCINE_SERVICES: "align", VACCINE_BACKEND: "wasm" };

describe("restart recovery", () => {
  it("SIGTERM finishes the step, writes a training state, exits 0; the next process resumes the job", async () => {
    const { base, data } = await tinyStore(env.VACCINE_STORE_ROOT);

    const first = await startProcess("services/main.ts", env);
    const client1 = createClient(AlignService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${first.port}` }));
    const { job } = await client1.createAlignJob({
      spec: {
        baseCheckpoint: base,
        dataset: { source: { case: "uri", value: data } },
        method: { case: "vaccine", value: { rho: 0.5 } },
        lora: { rank: 4, alpha: 8, dropout: 0 },
        training: { maxSteps: 40, batchSize: 3, learningRate: 0.01, maxSequenceLength: 64, checkpointEvery: 1000 },
      },
    });
    const id = job!.id;
    let stoppedAt = 0;
    try {
      for await (const { event } of client1.watchAlignJob({ jobId: id })) {
        if (event!.event.case === "step" && event!.event.value.step === 3) first.child.kill("SIGTERM");
        if (event!.event.case === "step") stoppedAt = event!.event.value.step;
      }
    } catch {
      // The stream ends with the process.
    }
    expect((await first.exited).code).toBe(0);
    const record = JSON.parse(readFileSync(join(env.VACCINE_JOBS_DIR, `${id}.json`), "utf8")).job;
    expect(record.state).toBe("JOB_STATE_QUEUED");
    expect(record.trainingState.uri).toMatch(/^store:\/\/checkpoints\//);
    expect(stoppedAt).toBeGreaterThanOrEqual(3);
    expect(stoppedAt).toBeLessThan(40);

    // A bound lowered in between holds for new jobs only: the accepted one keeps its 40 steps.
    const second = await startProcess("services/main.ts", { ...env, VACCINE_MAX_STEPS: "20" });
    try {
      const client2 = createClient(AlignService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${second.port}` }));
      const events: JobEvent[] = [];
      for await (const { event } of client2.watchAlignJob({ jobId: id })) events.push(event!);
      const steps = events.flatMap((e) => (e.event.case === "step" ? [e.event.value.step] : []));
      // History from the first process, then the resumed steps, with no step run twice.
      expect(steps).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      const logs = events.flatMap((e) => (e.event.case === "log" ? [e.event.value.message] : []));
      expect(logs.some((m) => m.includes(`resumed at step ${stoppedAt} of 40`))).toBe(true);
      expect((await client2.getAlignJob({ jobId: id })).job!.state).toBe(JobState.SUCCEEDED);
    } finally {
      second.child.kill("SIGTERM");
      await second.exited;
    }
  });
});
