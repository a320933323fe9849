// The one blocking read behind every Watch of an api (event-streams.ts), on a real
// redis-server: a client that stops reading holds one batch, not the job's whole history,
// and gets every event in order, without a gap, once it reads again; a client that reads
// gets each event as it is written, beside others that do not read or have nothing new.
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
  it("holds one batch for a watcher whose client has not taken it, and misses nothing once it does", async () => {
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
    const held = [...(streams as unknown as { watchers: Set<{ batch?: JobEvent[] }> }).watchers].flatMap((w) => w.batch ?? []).length;
    // One read's worth at most (1000 entries a stream), not the 3000.
    expect(held).toBeLessThanOrEqual(1000);
    const seen = [...(await pending).value!];
    while (seen.length < 3000) seen.push(...(await watch.next()).value!);
    expect(seen.map((e) => e.sequence)).toEqual(Array.from({ length: 3000 }, (_, i) => i + 2));
    stop.abort();
    await watch.return?.(undefined);
    streams.close();
  }, 30_000);

  it("gives a reading watcher each event as it is written while another holds a batch untaken", async () => {
    const jobs = new RedisJobs(conn, queueKeys("streams-live"));
    // Reads that wait 5 s: a watcher left out of one would wait that long, far over the bound below.
    const streams = new EventStreams({ url: redis.url }, jobs, conn, 5000);
    const spec = { case: "align" as const, value: create(AlignSpecSchema, {}) };
    // A job that writes nothing (its watcher keeps the read waiting), one whose client takes
    // nothing, one whose client reads.
    const [idle, slow, live] = [newJob(JobKind.ALIGN, spec, ""), newJob(JobKind.ALIGN, spec, ""), newJob(JobKind.ALIGN, spec, "")];
    for (const j of [idle, slow, live]) await jobs.create(j, undefined, { case: "stateChange", value: { from: JobState.UNSPECIFIED, to: JobState.QUEUED } });
    const stop = new AbortController();
    const [i, s, l] = [idle, slow, live].map((j) => streams.events(j.id, 1, stop.signal)[Symbol.asyncIterator]());
    const idleNext = i.next();
    // The slow watcher is given a batch its client never takes.
    const untaken = s.next();
    await jobs.write(slow.id, { event: { case: "step", value: { step: 1, totalSteps: 9 } } });
    await untaken;
    await jobs.write(slow.id, { event: { case: "step", value: { step: 2, totalSteps: 9 } } });
    for (let step = 1; step <= 5; step++) {
      const next = l.next();
      const t0 = performance.now();
      await jobs.write(live.id, { event: { case: "step", value: { step, totalSteps: 9 } } });
      expect(((await next).value as JobEvent[]).map((e) => e.sequence)).toEqual([step + 1]);
      // After the first (a watcher joins the read after the one under way), each comes at
      // once, not after a read it was not in.
      if (step > 1) expect(performance.now() - t0).toBeLessThan(2500);
    }
    stop.abort();
    await idleNext;
    await Promise.all([i, s, l].map((w) => w.return?.(undefined)));
    streams.close();
  }, 60_000);
});
