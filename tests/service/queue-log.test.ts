// A queue process's log is JSON lines only, whatever its Redis: BullMQ's own plain-text warning
// of an evicting Redis used to break it. What the Redis would lose is said once, as JSON, and
// an outage in a few lines rather than several a second.
import { afterEach, describe, expect, it } from "vitest";
import { startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";

let proc: ServiceProcess | undefined;
let redis: TestRedis | undefined;
afterEach(async () => {
  await proc?.stop();
  await redis?.stop();
});

/** An api and a worker in one process (VACCINE_ROLE=all) on `redis`. */
const start = (redis: TestRedis) => startProcess("dist/services/main.js", { VACCINE_QUEUE_URL: redis.url, VACCINE_SERVICES: "align,finetune", VACCINE_BACKEND: "wasm" });
const parse = (log: string) => log.split("\n").filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);

describe("the log of a queue process", () => {
  it("is JSON lines only, and says once each what an evicting Redis without persistence loses", async () => {
    // startRedis keeps nothing across a restart (appendonly no, save "").
    redis = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
    proc = await start(redis);
    // BullMQ's connections (the api's queue, the worker's two) are up by now.
    await new Promise((r) => setTimeout(r, 1000));
    await proc.stop();
    const lines = parse(proc.log());
    const said = (start: string) => lines.filter((l) => l.level === "warn" && String(l.msg).startsWith(start));
    expect(said("the queue's Redis evicts keys")).toEqual([expect.objectContaining({ maxmemory_policy: "allkeys-lru" })]);
    expect(said("the queue's Redis keeps nothing across a restart")).toEqual([expect.objectContaining({ appendonly: "no", save: "" })]);
  });

  it("says a Redis outage of 5 s in a few warnings, and when the connection is back", async () => {
    redis = await startRedis();
    proc = await start(redis);
    const before = proc.log().length;
    await redis.restart(() => new Promise((r) => setTimeout(r, 5000)));
    const restored = () => parse(proc!.log().slice(before)).filter((l) => l.msg === "job queue connection restored");
    for (const end = Date.now() + 10_000; restored().length < 2 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 100));
    const lines = parse(proc.log().slice(before));
    // Its api's connection and its worker's, once each, and the job services' health: 52 lines before.
    expect(lines.filter((l) => l.level === "warn").map((l) => l.msg)).toEqual(
      expect.arrayContaining(["job queue connection error", expect.stringMatching(/^job services NOT_SERVING/)]),
    );
    expect(lines.filter((l) => l.level === "warn").length).toBeLessThanOrEqual(4);
    // The api's and the worker's, each with how long it was away and how many errors it left out.
    expect(restored()).toHaveLength(2);
    for (const { down_seconds, suppressed } of restored()) {
      expect(down_seconds).toBeGreaterThan(4.5);
      expect(down_seconds).toBeLessThan(10);
      expect(suppressed).toBeGreaterThan(0);
    }
  });
});
