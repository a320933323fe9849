// Access control without authentication (the local first run), the warning when that is
// exposed beyond loopback, and a policy that must cover every served method.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { allows, type AccessPolicy } from "../../services/platform/access.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { startServer } from "../../services/platform/server.ts";
import { accessPolicy } from "../../services/suite/access.ts";
import { standInAlign, startAccessServer } from "../helpers/access-server.ts";

describe("VACCINE_AUTH=none", () => {
  it("treats every caller as the anonymous principal of one tenant with every role", async () => {
    const s = await startAccessServer({});
    await s.align().createAlignJob({});
    await s.server.shutdown();
    expect(s.seen).toEqual([{ tenant: "default", principal: "anonymous", roles: ["reader", "trainer", "admin"], via: "none" }]);
    expect(s.logs.some((l) => l.level === 40)).toBe(false);
  });

  it("warns loudly at start when the port is reachable beyond loopback", async () => {
    const s = await startAccessServer({ host: "0.0.0.0" });
    await s.server.shutdown();
    const warning = s.logs.find((l) => l.level === 40);
    expect(warning?.msg).toMatch(/AUTHENTICATION IS OFF/);
    expect(warning).toMatchObject({ host: "0.0.0.0", auth: "none" });
  });

  it("warns when bearer tokens would arrive in plaintext beyond loopback, not on loopback", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vaccine-plain-tokens-"));
    const file = join(dir, "tokens.json");
    writeFileSync(file, JSON.stringify({ [tokenHash("t")]: { tenant: "a", roles: ["reader"] } }));
    try {
      for (const [host, warned] of [["0.0.0.0", true], ["127.0.0.1", false]] as const) {
        const s = await startAccessServer({ host, authenticator: (logger) => tokenAuthenticator(file, logger) });
        await s.server.shutdown();
        const line = s.logs.find((l) => String(l.msg).startsWith("bearer credentials arrive in plaintext"));
        expect(Boolean(line), host).toBe(warned);
        if (warned) expect(line).toMatchObject({ level: 40, host, auth: "token", tls: "off" });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("access policy", () => {
  it("refuses to start when a served method has no role", async () => {
    const policy: AccessPolicy = { roles: ["reader"], methods: { "vaccine.v1.AlignService/ListAlignJobs": "reader" } };
    const logger = pino({ level: "silent" });
    await expect(startServer({ services: [standInAlign([])], access: { policy }, logger })).rejects.toThrow(/no role for vaccine.v1.AlignService\/CreateAlignJob/);
  });

  it("orders roles: a stronger role allows what a weaker one does", () => {
    const p = accessPolicy();
    expect(allows(p, ["admin"], "reader")).toBe(true);
    expect(allows(p, ["trainer"], "trainer")).toBe(true);
    expect(allows(p, ["reader"], "trainer")).toBe(false);
    expect(allows(p, ["auditor"], "reader")).toBe(false);
    expect(allows(p, [], "reader")).toBe(false);
  });

  it("works through every protocol's client: each call reaches its handler as the anonymous principal", async () => {
    const s = await startAccessServer({});
    for (const make of [createGrpcTransport, createGrpcWebTransport, createConnectTransport]) {
      expect(await s.align(make({ baseUrl: s.server.url, httpVersion: "2" })).listAlignJobs({})).toMatchObject({ jobs: [] });
    }
    await s.server.shutdown();
    expect(s.seen.map((p) => p?.principal)).toEqual(["anonymous", "anonymous", "anonymous"]);
  });
});
