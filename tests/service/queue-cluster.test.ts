// The queue on a real Redis Cluster of three masters, as deployed: an api process and a worker
// process with VACCINE_QUEUE_CLUSTER=true. A job trains to the end (its loss falls) and
// another is cancelled mid-run from the api (the cancel reaches the worker over the cluster's
// pub/sub); every key is under the hash tag {vaccine}.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { startRedisCluster } from "../../scripts/redis-server.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";
import { tinyStore } from "../helpers/tiny-store.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-queue-cluster-"));
const stops: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => {});
  rmSync(root, { recursive: true, force: true });
});

describe("the job queue on a Redis Cluster", () => {
  it("trains a job and cancels another across an api and a worker process; keys in one slot", async () => {
    const redis = await startRedisCluster();
    stops.push(redis.stop);
    const storeRoot = join(root, "store");
    const { store, base, data } = await tinyStore(storeRoot);

    const env = { VACCINE_QUEUE_URL: redis.url, VACCINE_QUEUE_CLUSTER: "true", VACCINE_STORE_ROOT: storeRoot, VACCINE_BACKEND: "wasm" };
    const start = async (role: string): Promise<ServiceProcess> => {
      const p = await startProcess("dist/services/main.js", { ...env, VACCINE_ROLE: role });
      stops.push(p.stop);
      return p;
    };
    const [api, worker] = await Promise.all([start("api"), start("worker")]);
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${api.port}` }));
    const spec = (maxSteps: number): MessageInitShape<typeof AlignSpecSchema> => ({
      baseCheckpoint: base,
      dataset: { source: { case: "uri", value: data } },
      method: { case: "sft", value: {} },
      lora: { rank: 4, alpha: 8, dropout: 0 },
      training: { maxSteps, batchSize: 4, learningRate: 0.01, maxSequenceLength: 64 },
    });

    const trained = (await align.createAlignJob({ spec: spec(30) })).job!.id;
    const cancelled = (await align.createAlignJob({ spec: spec(2000) })).job!.id;
    const events: JobEvent[] = [];
    for await (const { event } of align.watchAlignJob({ jobId: trained })) events.push(event!);
    const losses = events.flatMap((e) => (e.event.case === "step" ? [e.event.value.loss] : []));
    expect(losses).toHaveLength(30);
    expect(losses.slice(-5).reduce((a, b) => a + b) / 5).toBeLessThan(0.8 * (losses.slice(0, 5).reduce((a, b) => a + b) / 5));
    const done = (await align.getAlignJob({ jobId: trained })).job!;
    expect(done.state).toBe(JobState.SUCCEEDED);
    // The worker wrote the adapter to the shared store, intact.
    expect(readdirSync((await store.get(done.result!)).dir)).toContain("adapter_model.safetensors");

    // The second job runs once the first is done; cancelled at a step, it stops after it.
    for await (const { event } of align.watchAlignJob({ jobId: cancelled })) {
      if (event!.event.case === "step") {
        await align.cancelAlignJob({ jobId: cancelled });
        break;
      }
    }
    const ended: JobState[] = [];
    for await (const { event } of align.watchAlignJob({ jobId: cancelled })) if (event!.event.case === "stateChange") ended.push(event!.event.value.to);
    expect(ended.at(-1)).toBe(JobState.CANCELLED);
    expect(worker.log()).toContain('"msg":"job started"');

    // Every key of the queue hashes to {vaccine}'s slot, whatever node the cluster put it on.
    const cli = (...args: string[]) => spawnSync("redis-cli", ["-c", "-p", String(redis.port), ...args], { encoding: "utf8" }).stdout.trim();
    const slot = cli("cluster", "keyslot", "{vaccine}");
    const keys = redis.nodes.flatMap((n) => spawnSync("redis-cli", ["-p", String(n.port), "--scan"], { encoding: "utf8" }).stdout.split("\n").filter(Boolean));
    expect(keys).toEqual(expect.arrayContaining([`{vaccine}:job:${trained}`, `{vaccine}:job:${cancelled}:events`, "{vaccine}:index:align"]));
    expect(new Set(keys.map((k) => cli("cluster", "keyslot", k)))).toEqual(new Set([slot]));
  }, 120_000);
});
