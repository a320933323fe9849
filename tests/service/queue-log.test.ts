// A queue process's log is JSON lines only, whatever its Redis: BullMQ's own plain-text warning
// of an evicting Redis used to break it. What the Redis would lose is said once, as JSON.
import { afterAll, describe, expect, it } from "vitest";
import { startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";

let proc: ServiceProcess | undefined;
let redis: TestRedis | undefined;
afterAll(async () => {
  await proc?.stop();
  await redis?.stop();
});

const parse = (log: string) => log.split("\n").filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);

describe("the log of a queue process", () => {
  it("is JSON lines only, and says once each what an evicting Redis without persistence loses", async () => {
    // startRedis keeps nothing across a restart (appendonly no, save "").
    redis = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
    proc = await startProcess("dist/services/main.js", { VACCINE_QUEUE_URL: redis.url, VACCINE_SERVICES: "align,finetune", VACCINE_BACKEND: "wasm" });
    // BullMQ's connections (the api's queue, the worker's two) are up by now.
    await new Promise((r) => setTimeout(r, 1000));
    await proc.stop();
    const lines = parse(proc.log());
    const said = (start: string) => lines.filter((l) => l.level === "warn" && String(l.msg).startsWith(start));
    expect(said("the queue's Redis evicts keys")).toEqual([expect.objectContaining({ maxmemory_policy: "allkeys-lru" })]);
    expect(said("the queue's Redis keeps nothing across a restart")).toEqual([expect.objectContaining({ appendonly: "no", save: "" })]);
  });
});
