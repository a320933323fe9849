// Bearer tokens from a tokens file: principals reach the handlers, roles decide, health is
// open, reflection needs credentials unless opened, the file reloads on change, and no token
// is ever written to the logs.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import { GrantsFileError } from "../../services/platform/grants-file.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { bearer, startAccessServer, type AccessServer } from "../helpers/access-server.ts";
import { rpcFailure } from "../helpers/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "vaccine-tokens-"));
const file = join(dir, "tokens.json");
const token = () => randomBytes(32).toString("base64url");
const reader = token();
const trainer = token();
const admin = token();
const later = token();
const grants = {
  [tokenHash(reader)]: { tenant: "team-a", roles: ["reader"], principal: "alice" },
  [tokenHash(trainer)]: { tenant: "team-a", roles: ["trainer"] },
  [tokenHash(admin)]: { tenant: "ops", roles: ["admin"], principal: "root" },
};
/** Replaces the file as editors and Secret updates do: a new file renamed over the old. */
function writeTokens(content: unknown) {
  writeFileSync(join(dir, "next.json"), JSON.stringify(content));
  renameSync(join(dir, "next.json"), file);
}
writeTokens(grants);

let s: AccessServer;
let open: AccessServer;
beforeAll(async () => {
  s = await startAccessServer({ authenticator: (logger) => tokenAuthenticator(file, logger, { debounceMs: 20, pollMs: 200 }) });
  open = await startAccessServer({ authenticator: (logger) => tokenAuthenticator(file, logger), access: { reflectionOpen: true } });
});
afterAll(async () => {
  await s?.server.shutdown();
  await open?.server.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

async function reflect(url: string, options = {}) {
  const stream = createClient(ServerReflection, createGrpcTransport({ baseUrl: url })).serverReflectionInfo(
    (async function* () {
      yield { messageRequest: { case: "listServices" as const, value: "" } };
    })(),
    options,
  );
  for await (const r of stream) return r.messageResponse.case;
}

describe("token authentication", () => {
  it.each([
    ["no authorization header", {}, "CREDENTIALS_MISSING"],
    ["a scheme other than Bearer", { headers: { authorization: `Basic ${reader}` } }, "CREDENTIALS_MALFORMED"],
    ["two tokens", { headers: { authorization: `Bearer ${reader}, Bearer ${trainer}` } }, "CREDENTIALS_MALFORMED"],
    ["a token no entry grants", bearer(token()), "TOKEN_UNKNOWN"],
  ])("refuses %s with UNAUTHENTICATED", async (_, options, reason) => {
    const e = await rpcFailure(() => s.align().listAlignJobs({}, options));
    expect(e.code).toBe(Code.Unauthenticated);
    expect(e.info?.reason).toBe(reason);
    expect(e.info?.domain).toBe("vaccine.v1");
  });

  it.each([["HTTP/1.1", "--http1.1"], ["HTTP/2", "--http2-prior-knowledge"]])("refuses two authorization headers over %s, not the first of them", async (_, flag) => {
    // Node keeps only the first of repeated Authorization fields; connect clients cannot send two.
    const { stdout } = await promisify(execFile)("curl", [
      "-s",
      flag,
      "-w",
      "\n%{http_code}",
      "-H",
      "content-type: application/json",
      "-H",
      `authorization: Bearer ${trainer}`,
      "-H",
      `authorization: Bearer ${reader}`,
      "-d",
      "{}",
      `${s.server.url}/vaccine.v1.AlignService/ListAlignJobs`,
    ]);
    const [body, status] = [stdout.slice(0, stdout.lastIndexOf("\n")), stdout.slice(stdout.lastIndexOf("\n") + 1)];
    expect(status).toBe("401");
    expect(JSON.parse(body)).toMatchObject({ code: "unauthenticated", message: 'the request has 2 authorization headers; send one "Bearer <token>"' });
  });

  it("hands the principal to the handler: tenant, principal, roles", async () => {
    s.seen.length = 0;
    await s.align().listAlignJobs({}, bearer(reader));
    await s.align().createAlignJob({}, bearer(trainer));
    expect(s.seen).toEqual([
      { tenant: "team-a", principal: "alice", roles: ["reader"], via: "token" },
      // Unnamed entries are named by a prefix of the token's hash, never the token.
      { tenant: "team-a", principal: `token:${tokenHash(trainer).slice(0, 12)}`, roles: ["trainer"], via: "token" },
    ]);
  });

  it("refuses a role too weak for the method with PERMISSION_DENIED; stronger roles include weaker ones", async () => {
    const e = await rpcFailure(() => s.align().createAlignJob({}, bearer(reader)));
    expect(e.code).toBe(Code.PermissionDenied);
    expect(e.info?.reason).toBe("ROLE_REQUIRED");
    expect(e.info?.metadata).toEqual({ method: "vaccine.v1.AlignService/CreateAlignJob", required_role: "trainer" });
    await s.align().listAlignJobs({}, bearer(trainer));
    await s.align().createAlignJob({}, bearer(admin));
  });

  it("authenticates a stream before it starts", async () => {
    s.seen.length = 0;
    const e = await rpcFailure(async () => {
      for await (const _ of s.align().watchAlignJob({ jobId: "x" })) void _;
    });
    expect(e.code).toBe(Code.Unauthenticated);
    expect(s.seen).toEqual([]);
  });

  it("keeps health open for probes, and reflection closed unless configured open", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: s.server.url }));
    expect((await health.check({ service: "" })).status).toBe(S.SERVING);
    const e = await rpcFailure(() => reflect(s.server.url));
    expect(e.code).toBe(Code.Unauthenticated);
    expect(await reflect(s.server.url, bearer(reader))).toBe("listServicesResponse");
    expect(await reflect(open.server.url)).toBe("listServicesResponse");
  });

  it("reloads the tokens file: a new token works, a removed one stops working, a broken file changes nothing", async () => {
    writeTokens({ ...grants, [tokenHash(later)]: { tenant: "team-b", roles: ["reader"] } });
    await eventually(() => s.align().listAlignJobs({}, bearer(later)));
    const { [tokenHash(reader)]: _, ...withoutReader } = grants;
    writeTokens(withoutReader);
    await eventually(async () => expect((await rpcFailure(() => s.align().listAlignJobs({}, bearer(reader)))).info?.reason).toBe("TOKEN_UNKNOWN"));
    writeFileSync(file, "{ not json");
    await new Promise((r) => setTimeout(r, 500));
    await s.align().listAlignJobs({}, bearer(trainer));
    expect(s.logs.some((l) => l.msg === "could not load changed credentials; keeping the current ones")).toBe(true);
  });

  it("never writes a token to the logs", () => {
    const text = s.logText() + open.logText();
    // The refusals were logged (the audit log), so there was something to leak.
    expect(text).toContain('"outcome":"UNAUTHENTICATED"');
    for (const t of [reader, trainer, admin, later]) expect(text).not.toContain(t);
  });
});

describe("tokens file", () => {
  it("reads YAML too", async () => {
    const yamlFile = join(dir, "tokens.yaml");
    writeFileSync(yamlFile, `${tokenHash(reader)}:\n  tenant: team-a\n  roles: [reader]\n`);
    const auth = await tokenAuthenticator(yamlFile);
    const p = await auth.authenticate({ header: new Headers({ authorization: `Bearer ${reader}` }) });
    auth.close();
    expect(p).toMatchObject({ tenant: "team-a", roles: ["reader"] });
  });

  it("refuses a bad file at start, naming every bad entry but no value", async () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ [reader]: { tenant: "a", roles: ["reader"] }, [tokenHash(trainer)]: { tenant: "../x", roles: "admin", extra: 1 } }));
    const err = await tokenAuthenticator(bad).catch((e: Error) => e);
    expect(err).toBeInstanceOf(GrantsFileError);
    const message = (err as Error).message;
    expect(message).toContain("entry 1: key must be the SHA-256 of a token");
    expect(message).toContain("entry 2: unknown field(s) extra");
    expect(message).toContain("entry 2: tenant must match");
    expect(message).toContain("entry 2: roles must be a list");
    expect(message).not.toContain(reader);
  });
});

async function eventually(check: () => Promise<unknown>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
