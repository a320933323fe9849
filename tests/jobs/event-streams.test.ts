// The one blocking read behind every Watch of an api (event-streams.ts), on a real
// redis-server: a client that stops reading holds one batch, not the job's whole history,
// and gets every event in order, without a gap, once it reads again.
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobKind, JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { connectQueue, queueKeys, type QueueRedis } from "../../services/jobs/queue/connection.ts";
import { EventStreams } from "../../services/jobs/queue/event-streams.ts";
import { RedisJobs } from "../../services/jobs/queue/redis-jobs.ts";
import { newJob } from "../../services/jobs/new-job.ts";
import { startRedis, type TestRedis } from "../../scripts/redis-server.ts";

let redis: TestRedis;
let conn: QueueRedis;
beforeAll(async () => {
  redis = await startRedis();
  conn = connectQueue({ url: redis.url }, 3);
});
afterAll(async () => {
  await conn.quit();
  await redis.stop();
});

describe("EventStreams", () => {
  it("reads nothing more for a watcher whose client has not taken its batch, and misses nothing once it does", async () => {
    const jobs = new RedisJobs(conn, queueKeys("streams"));
    const streams = new EventStreams({ url: redis.url }, jobs, conn);
    const job = newJob(JobKind.ALIGN, { case: "align", value: create(AlignSpecSchema, {}) }, "");
    await jobs.create(job, undefined, { case: "stateChange", value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED } });
    const stop = new AbortController();
    const watch = streams.events(job.id, 0, stop.signal)[Symbol.asyncIterator]();
    expect(((await watch.next()).value as JobEvent[]).map((e) => e.sequence)).toEqual([1]);
    // The client stops reading while the job writes 3000 events.
    const pending = watch.next();
    for (let step = 1; step <= 3000; step++) await jobs.write(job.id, { event: { case: "step", value: { step, totalSteps: 3000 } } });
    await new Promise((r) => setTimeout(r, 1500));
    const held = [...(streams as unknown as { watchers: Set<{ batches: JobEvent[][] }> }).watchers].flatMap((w) => w.batches.flat()).length;
    // One read's worth at most (1000 entries a stream), not the 3000.
    expect(held).toBeLessThanOrEqual(1000);
    const seen = [...(await pending).value!];
    while (seen.length < 3000) seen.push(...(await watch.next()).value!);
    expect(seen.map((e) => e.sequence)).toEqual(Array.from({ length: 3000 }, (_, i) => i + 2));
    stop.abort();
    await watch.return?.(undefined);
    streams.close();
  }, 30_000);
});
