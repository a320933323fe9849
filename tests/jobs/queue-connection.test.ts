// The queue's Redis client and key names: a cluster's keys share one hash tag, a client of a
// Redis that cannot be reached retries (and reports) at one server's pace, not ten times a
// second for minutes, and the start says what the Redis would lose in a restart.
import { describe, expect, it } from "vitest";
import type { Redis } from "ioredis";
import { connectQueue, queueKeys, queueProblem, queueRisks, quietBullmqChecks } from "../../services/jobs/queue/connection.ts";
import { createLogger } from "../../services/platform/log.ts";
import { startRedis } from "../../scripts/redis-server.ts";

describe("queue connection", () => {
  it("puts every key of a cluster's queue under the prefix's hash tag, and leaves one server's alone", () => {
    expect(queueKeys().job("j")).toBe("vaccine:job:j");
    const k = queueKeys(undefined, true);
    expect([k.job("j"), k.events("j"), k.index("align"), k.tenantIndex("align", "t"), k.active("t"), k.lock("j"), k.cancel, k.wait]).toEqual([
      "{vaccine}:job:j",
      "{vaccine}:job:j:events",
      "{vaccine}:index:align",
      "{vaccine}:index:align:t",
      "{vaccine}:active:t",
      "{vaccine}:queue:j:lock",
      "{vaccine}:cancel",
      "{vaccine}:queue:wait",
    ]);
    // A prefix that holds a tag already keeps it.
    expect(queueKeys("a{b}", true).job("j")).toBe("a{b}:job:j");
  });

  it.each([false, true])("reports a Redis it cannot reach at a bounded pace (cluster %s), naming where", async (cluster) => {
    const errors: string[] = [];
    const redis = connectQueue({ url: "redis://127.0.0.1:1/0", cluster }, 3, (err) => errors.push(err.message));
    await new Promise((r) => setTimeout(r, 3000));
    redis.disconnect();
    // ioredis's default cluster pace gave 48 errors in these 3 s (and ten a second for minutes).
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.length).toBeLessThan(35);
    expect(errors.every((e) => e.includes("127.0.0.1:1"))).toBe(true);
  });

  it.each([
    { redis: ["--appendonly", "yes"], said: [] },
    { redis: ["--save", "60 1"], said: [["info", "the queue's Redis keeps snapshots only: a restart loses the jobs written since the last one (appendonly yes keeps them)", "60 1"]] },
    // A managed Redis often renames CONFIG away: the start goes on without that check.
    { redis: ["--rename-command", "CONFIG", ""], said: [["debug", "the queue's Redis refuses CONFIG GET: whether it keeps its data across a restart is not checked", undefined]] },
  ])("says at start what a restart of its Redis loses ($redis)", async ({ redis: args, said }) => {
    const redis = await startRedis(args);
    try {
      const lines: Record<string, unknown>[] = [];
      const problem = await queueProblem({ url: redis.url }, createLogger("debug", { write: (s: string) => void lines.push(JSON.parse(s)) }));
      expect(problem).toBeUndefined();
      expect(lines.map((l) => [l.level, l.msg, l.save])).toEqual(said);
    } finally {
      await redis.stop();
    }
  });

  it("warns of a Redis older than 6.2, which BullMQ's own check would have said in plain text", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger("debug", { write: (s: string) => void lines.push(JSON.parse(s)) });
    const persistent = { config: async () => ["save", "60 1"] } as unknown as Pick<Redis, "config">;
    for (const version of ["6.0.16", "6.2.0", "7.0.15"]) await queueRisks(persistent, `redis_version:${version}\naof_enabled:1\n`, logger);
    expect(lines.map((l) => [l.level, l.redis_version])).toEqual([["warn", "6.0"]]);
  });

  it("keeps BullMQ's plain-text server checks off the console, and every other warning on it", () => {
    const original = console.warn;
    const written: unknown[][] = [];
    console.warn = (...args: unknown[]) => void written.push(args);
    try {
      quietBullmqChecks();
      quietBullmqChecks();
      console.warn('IMPORTANT! Eviction policy is allkeys-lru. It should be "noeviction"');
      console.warn("It is highly recommended to use a minimum Redis version of 6.2.0\n             Current: 6.0.16");
      console.warn("something else", 1);
      expect(written).toEqual([["something else", 1]]);
    } finally {
      console.warn = original;
    }
  });
});
