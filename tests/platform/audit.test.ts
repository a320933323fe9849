// The audit log on a real server with token authentication: one line per mutating call and per
// refusal (authentication, role, rate limit, NOT_FOUND), none for a successful read; each line
// names tenant, principal, method, the identifiers of request and response, outcome and trace
// id, and nothing secret or bulky: no token, no token hash, no message body.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { createLogger } from "../../services/platform/log.ts";
import { startServer, type RunningServer, type ServiceModule } from "../../services/platform/server.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { accessPolicy, isMutating } from "../../services/suite/access.ts";
import { bearer } from "../helpers/access-server.ts";
import { rpcFailure } from "../helpers/errors.ts";

const token = () => randomBytes(32).toString("base64url");
const reader = token();
const trainer = token();
const flood = token();
const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const traceparent = { traceparent: `00-${TRACE}-00f067aa0ba902b7-01` };
const BURST = 20;

// Stand-ins: a job "job-1" exists, nothing else does; an import names its base first.
const services: ServiceModule[] = [
  {
    desc: AlignService,
    register: (router) =>
      router.service(AlignService, {
        createAlignJob: () => ({ job: { id: "job-1", traceId: TRACE } }),
        listAlignJobs: () => ({}),
        getAlignJob: (req) => {
          if (req.jobId !== "job-1") throw new ConnectError(`job ${req.jobId.slice(0, 64)} not found`, Code.NotFound);
          return { job: { id: "job-1" } };
        },
        async *watchAlignJob() {
          throw new ConnectError("not found", Code.NotFound);
        },
      }),
  },
  {
    desc: CheckpointService,
    register: (router) =>
      router.service(CheckpointService, {
        async importCheckpoint(requests) {
          for await (const _ of requests);
          return { checkpoint: { ref: { uri: "store://checkpoints/new", digest: "sha256:0123" }, displayName: "mine" } };
        },
      }),
  },
];

const dir = mkdtempSync(join(tmpdir(), "vaccine-audit-"));
const tokensFile = join(dir, "tokens.json");
writeFileSync(
  tokensFile,
  JSON.stringify({
    [tokenHash(reader)]: { tenant: "team-a", roles: ["reader"], principal: "alice" },
    // No principal: named by a hash prefix, never the whole hash.
    [tokenHash(trainer)]: { tenant: "team-a", roles: ["trainer"] },
    [tokenHash(flood)]: { tenant: "team-f", roles: ["reader"], principal: "flood" },
  }),
);

let server: RunningServer;
const raw: string[] = [];
const manager = new AsyncLocalStorageContextManager();
const lines = () => raw.map((l) => JSON.parse(l) as Record<string, unknown>);
const auditLines = () => lines().filter((l) => l.msg === "audit");

beforeAll(async () => {
  // What the service process has (tracerProvider.register()): the RPC span is the active one.
  context.setGlobalContextManager(manager.enable());
  // The service logger, at warn: audit lines are info lines and must be written anyway.
  const logger = createLogger("warn", { write: (line: string) => void raw.push(line) });
  server = await startServer({
    services,
    logger,
    access: { policy: accessPolicy(), authenticator: await tokenAuthenticator(tokensFile, logger) },
    rateLimit: { perSecond: 0.01, burst: BURST },
    audit: { mutating: (m) => isMutating(m.name) },
  });
});
afterAll(async () => {
  await server?.shutdown();
  manager.disable();
  context.disable();
  rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => void (raw.length = 0));

const transport = () => createGrpcTransport({ baseUrl: server.url });
const align = () => createClient(AlignService, transport());
const checkpoints = () => createClient(CheckpointService, transport());
const as = (t: string) => ({ headers: { ...bearer(t).headers, ...traceparent } });

describe("the audit log", () => {
  it("writes one line for a mutating call: time, tenant, principal, method, request and response identifiers, outcome, trace id", async () => {
    const body = "SECRET-BODY-" + "x".repeat(1000);
    await align().createAlignJob(
      { spec: { baseCheckpoint: { uri: "store://checkpoints/base", digest: "sha256:aa" }, dataset: { source: { case: "builtin", value: { name: body } } } } },
      as(trainer),
    );
    const audit = auditLines();
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({
      level: "info",
      audit: true,
      tenant: "team-a",
      principal: `token:${tokenHash(trainer).slice(0, 12)}`,
      method: "vaccine.v1.AlignService/CreateAlignJob",
      resource: { "spec.base_checkpoint.uri": "store://checkpoints/base", "spec.base_checkpoint.digest": "sha256:aa", "job.id": "job-1" },
      outcome: "OK",
      trace_id: TRACE,
    });
    expect(new Date(audit[0].time as string).toISOString()).toBe(audit[0].time);
    expect(audit[0]).not.toHaveProperty("reason");
    // Not a resource: the request's other fields, the response's trace id.
    expect(Object.keys(audit[0].resource as object)).toHaveLength(3);
    expect(raw.join("")).not.toContain("SECRET-BODY");
    // A method's own dataset, four fields deep, is named too.
    raw.length = 0;
    await align().createAlignJob(
      {
        spec: {
          baseCheckpoint: { uri: "store://checkpoints/base", digest: "sha256:aa" },
          method: { case: "booster", value: { harmfulDataset: { source: { case: "uri", value: "store://datasets/harm" } } } },
        },
      },
      as(trainer),
    );
    expect(auditLines()[0].resource).toMatchObject({ "spec.booster.harmful_dataset.uri": "store://datasets/harm" });
  });

  it("names a streamed request by its first message and the response, never by its chunks", async () => {
    const res = await checkpoints().importCheckpoint(
      (async function* () {
        yield { content: { case: "metadata" as const, value: { base: { uri: "store://checkpoints/base", digest: "sha256:aa" }, displayName: "DISPLAY" } } };
        yield { content: { case: "chunk" as const, value: { path: "model.safetensors", data: new TextEncoder().encode("CHUNK-BYTES") } } };
      })(),
      as(trainer),
    );
    expect(res.checkpoint?.ref?.uri).toBe("store://checkpoints/new");
    const audit = auditLines();
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({
      method: "vaccine.v1.CheckpointService/ImportCheckpoint",
      resource: {
        "metadata.base.uri": "store://checkpoints/base",
        "metadata.base.digest": "sha256:aa",
        "checkpoint.ref.uri": "store://checkpoints/new",
        "checkpoint.ref.digest": "sha256:0123",
      },
      outcome: "OK",
    });
    for (const s of ["DISPLAY", "CHUNK-BYTES", "model.safetensors", "mine"]) expect(raw.join("")).not.toContain(s);
  });

  it("writes nothing for a read that succeeds", async () => {
    await align().listAlignJobs({}, as(reader));
    await align().getAlignJob({ jobId: "job-1" }, as(reader));
    expect(auditLines()).toEqual([]);
  });

  it("writes every refusal: no credentials, a missing role, NOT_FOUND (unary and streamed), the rate limit", async () => {
    expect((await rpcFailure(() => align().createAlignJob({}, { headers: traceparent }))).code).toBe(Code.Unauthenticated);
    expect((await rpcFailure(() => align().createAlignJob({}, as(reader)))).code).toBe(Code.PermissionDenied);
    const long = "j".repeat(100_000);
    expect((await rpcFailure(() => align().getAlignJob({ jobId: long }, as(reader)))).code).toBe(Code.NotFound);
    expect((await rpcFailure(async () => {
      for await (const _ of align().watchAlignJob({ jobId: "job-2" }, as(reader)));
    })).code).toBe(Code.NotFound);
    for (let i = 0; i < BURST; i++) await align().listAlignJobs({}, as(flood));
    expect((await rpcFailure(() => align().listAlignJobs({}, as(flood)))).code).toBe(Code.ResourceExhausted);

    const audit = auditLines();
    const pick = ({ tenant, principal, method, outcome, reason, resource }: Record<string, unknown>) => ({ tenant, principal, method, outcome, reason, resource });
    expect(audit.map(pick)).toEqual([
      { tenant: undefined, principal: undefined, method: "vaccine.v1.AlignService/CreateAlignJob", outcome: "UNAUTHENTICATED", reason: "CREDENTIALS_MISSING", resource: undefined },
      { tenant: "team-a", principal: "alice", method: "vaccine.v1.AlignService/CreateAlignJob", outcome: "PERMISSION_DENIED", reason: "ROLE_REQUIRED", resource: undefined },
      { tenant: "team-a", principal: "alice", method: "vaccine.v1.AlignService/GetAlignJob", outcome: "NOT_FOUND", reason: undefined, resource: { job_id: `${"j".repeat(256)}...(100000 chars)` } },
      { tenant: "team-a", principal: "alice", method: "vaccine.v1.AlignService/WatchAlignJob", outcome: "NOT_FOUND", reason: undefined, resource: { job_id: "job-2" } },
      { tenant: "team-f", principal: "flood", method: "vaccine.v1.AlignService/ListAlignJobs", outcome: "RESOURCE_EXHAUSTED", reason: "RATE_LIMITED", resource: undefined },
    ]);
    expect(audit.every((l) => l.trace_id === TRACE)).toBe(true);
    // Who knocked, for the refusals that name no principal: the connection's address.
    expect(audit.every((l) => l.remote === "127.0.0.1")).toBe(true);
  });

  it("never writes a bearer token or its hash, in any line of the log", async () => {
    await align().createAlignJob({}, as(trainer));
    await rpcFailure(() => align().createAlignJob({}, as(reader)));
    await rpcFailure(() => align().listAlignJobs({}, bearer(token())));
    const text = raw.join("");
    expect(auditLines().length).toBe(3);
    for (const t of [reader, trainer, flood]) {
      expect(text).not.toContain(t);
      expect(text).not.toContain(tokenHash(t));
    }
    expect(text.toLowerCase()).not.toContain("bearer");
    expect(text.toLowerCase()).not.toContain("authorization");
  });
});
