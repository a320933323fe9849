// The queue's Redis client and key names: a cluster's keys share one hash tag, and a client of
// a Redis that cannot be reached retries (and reports) at one server's pace, not ten times a
// second for minutes.
import { describe, expect, it } from "vitest";
import { connectQueue, queueKeys } from "../../services/jobs/queue/connection.ts";

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
});
