// Per-tenant request rate: a token bucket per tenant; over it, RESOURCE_EXHAUSTED with
// ErrorInfo naming the limit and RetryInfo saying when to come back.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { TokenBuckets } from "../../services/platform/rate-limit.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { bearer, startAccessServer, type AccessServer } from "../helpers/access-server.ts";
import { errorDetails } from "../helpers/errors.ts";

describe("token buckets", () => {
  it("grant a burst, then refill at the rate, per key", () => {
    let t = 0;
    const b = new TokenBuckets(2, 3, () => t);
    expect([b.take("a"), b.take("a"), b.take("a")]).toEqual([0, 0, 0]);
    expect(b.take("a")).toBe(500); // one token per 500 ms
    expect(b.take("b")).toBe(0);
    t = 250;
    expect(b.take("a")).toBe(250);
    t = 500;
    expect(b.take("a")).toBe(0);
    t = 100_000;
    expect([b.take("a"), b.take("a"), b.take("a"), b.take("a")]).toEqual([0, 0, 0, 500]); // never more than the burst
  });
});

const dir = mkdtempSync(join(tmpdir(), "vaccine-rate-"));
const file = join(dir, "tokens.json");
writeFileSync(file, JSON.stringify({
  [tokenHash("token-a")]: { tenant: "team-a", roles: ["reader"] },
  [tokenHash("token-a2")]: { tenant: "team-a", roles: ["reader"] },
  [tokenHash("token-b")]: { tenant: "team-b", roles: ["reader"] },
}));

let s: AccessServer;
beforeAll(async () => {
  s = await startAccessServer({ authenticator: (logger) => tokenAuthenticator(file, logger), rateLimit: { perSecond: 1, burst: 3 } });
});
afterAll(async () => {
  await s?.server.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

describe("rate limit", () => {
  it("refuses a tenant over its rate with RetryInfo, counting all its principals, and not other tenants or health", async () => {
    // Alternating two principals of one tenant; a loaded machine may refill a token meanwhile.
    let accepted = 0;
    let err: unknown;
    while (!err && accepted < 10) {
      try {
        await s.align().listAlignJobs({}, bearer(accepted % 2 ? "token-a2" : "token-a"));
        accepted++;
      } catch (e) {
        err = e;
      }
    }
    expect(accepted).toBeGreaterThanOrEqual(3);
    expect(accepted).toBeLessThanOrEqual(5);
    const d = errorDetails(err);
    expect(d.code).toBe(Code.ResourceExhausted);
    expect(d.info?.reason).toBe("RATE_LIMITED");
    expect(d.info?.metadata).toMatchObject({ limit: "requests_per_second", requests_per_second: "1", burst: "3", tenant: "team-a" });
    const retry = ConnectError.from(err).findDetails(RetryInfoSchema)[0];
    const delayMs = Number(retry.retryDelay!.seconds) * 1000 + retry.retryDelay!.nanos / 1e6;
    expect(delayMs).toBeGreaterThan(0);
    expect(delayMs).toBeLessThanOrEqual(1000);

    await s.align().listAlignJobs({}, bearer("token-b"));
    const health = createClient(Health, createGrpcTransport({ baseUrl: s.server.url }));
    for (let i = 0; i < 10; i++) await health.check({ service: "" });

    // Coming back after the advertised delay works.
    await new Promise((r) => setTimeout(r, delayMs + 20));
    await s.align().listAlignJobs({}, bearer("token-a"));
  });

  it("counts calls refused for a missing role too: a reader cannot write audit lines as fast as it calls", async () => {
    const codes: (Code | "ok")[] = [];
    for (let i = 0; i < 10 && !codes.includes(Code.ResourceExhausted); i++) {
      codes.push(await s.align().createAlignJob({}, bearer("token-b")).then(() => "ok" as const, (e: unknown) => ConnectError.from(e).code));
    }
    // The burst's calls are refused for the role; then the tenant is over its rate.
    expect(codes.at(-1)).toBe(Code.ResourceExhausted);
    expect(codes.slice(0, -1).every((c) => c === Code.PermissionDenied)).toBe(true);
    expect(codes.length).toBeLessThanOrEqual(5);
  });
});
