// A real server on port 0, called over the network by connect clients in all three protocols.
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ServerReflection, ServerReflectionRequestSchema } from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

let suite: TestSuite;
let server: TestSuite["server"];
beforeAll(async () => {
  suite = await startSuite();
  server = suite.server;
});
afterAll(() => suite.close());

const grpc = () => createGrpcTransport({ baseUrl: server.url });

describe("one port, three protocols", () => {
  it.each([
    ["grpc", () => createGrpcTransport({ baseUrl: server.url })],
    ["grpc-web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2" })],
    ["connect", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
  ])("%s: health answers and validation errors carry details", async (_, transport) => {
    const t = transport();
    const health = createClient(Health, t);
    expect((await health.check({ service: "" })).status).toBe(S.SERVING);
    const e = await rpcFailure(() => createClient(AlignService, t).listAlignJobs({ pageSize: -5 }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("FIELD_INVALID");
    expect(e.badRequest?.fieldViolations[0].field).toBe("page_size");
  });
});

describe("many calls at once", () => {
  it("emit no process warning (connect links each call in flight to the server's shutdown signal)", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      const health = createClient(Health, grpc());
      await Promise.all(Array.from({ length: 40 }, () => health.check({ service: "" })));
      // Warnings are emitted on the next tick.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings.map((w) => w.name)).not.toContain("MaxListenersExceededWarning");
  });
});

describe("grpc.health.v1", () => {
  it("Check knows each service and the server, and NOT_FOUND otherwise", async () => {
    const health = createClient(Health, grpc());
    for (const name of ["", "vaccine.v1.AlignService", "vaccine.v1.FineTuneService", "vaccine.v1.EmbedService", "vaccine.v1.ScoreService", "vaccine.v1.DatasetService", "vaccine.v1.CheckpointService"]) {
      expect((await health.check({ service: name })).status).toBe(S.SERVING);
    }
    const e = await rpcFailure(() => health.check({ service: "nope.Service" }));
    expect(e).toMatchObject({ code: Code.NotFound, message: 'unknown service "nope.Service"', info: { reason: "SERVICE_UNKNOWN", metadata: { service: "nope.Service" } } });
    // A huge name is NOT_FOUND too, quoted bounded: echoed whole it broke the client's header limit.
    const huge = await rpcFailure(() => health.check({ service: "x".repeat(100_000) }));
    expect(huge).toMatchObject({ code: Code.NotFound, message: `unknown service "${"x".repeat(64)}"... (100000 characters)` });
    expect(huge.info.metadata.service).toHaveLength(256);
  });

  it("List returns every status", async () => {
    const res = await createClient(Health, grpc()).list({});
    expect(Object.keys(res.statuses).sort()).toEqual(
      ["", "vaccine.v1.AlignService", "vaccine.v1.CheckpointService", "vaccine.v1.DatasetService", "vaccine.v1.EmbedService", "vaccine.v1.FineTuneService", "vaccine.v1.ScoreService"],
    );
  });

  it("Watch sends the current status and then every change", async () => {
    const abort = new AbortController();
    const seen: S[] = [];
    const stream = createClient(Health, grpc()).watch({ service: "vaccine.v1.EmbedService" }, { signal: abort.signal });
    const done = (async () => {
      try {
        for await (const r of stream) {
          seen.push(r.status);
          if (seen.length === 1) server.health.set("vaccine.v1.EmbedService", S.NOT_SERVING);
          if (seen.length === 2) server.health.set("vaccine.v1.EmbedService", S.SERVING);
          if (seen.length === 3) abort.abort();
        }
      } catch (err) {
        if (!abort.signal.aborted) throw err;
      }
    })();
    await done;
    expect(seen).toEqual([S.SERVING, S.NOT_SERVING, S.SERVING]);
  });

  it("Watch of an unknown service says SERVICE_UNKNOWN instead of failing", async () => {
    const abort = new AbortController();
    const stream = createClient(Health, grpc()).watch({ service: "x.Y" }, { signal: abort.signal });
    for await (const r of stream) {
      expect(r.status).toBe(S.SERVICE_UNKNOWN);
      break;
    }
    abort.abort();
  });
});

describe("server reflection v1", () => {
  async function reflect(requests: MessageInitShape<typeof ServerReflectionRequestSchema>[]) {
    const client = createClient(ServerReflection, grpc());
    async function* input() {
      for (const r of requests) yield r;
    }
    const out = [];
    for await (const res of client.serverReflectionInfo(input())) out.push(res);
    return out;
  }

  it("lists the six services, health and reflection", async () => {
    const [res] = await reflect([{ messageRequest: { case: "listServices", value: "" } }]);
    expect(res.messageResponse.case).toBe("listServicesResponse");
    const names = res.messageResponse.case === "listServicesResponse" ? res.messageResponse.value.service.map((s) => s.name) : [];
    expect(names.sort()).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "vaccine.v1.AlignService",
      "vaccine.v1.CheckpointService",
      "vaccine.v1.DatasetService",
      "vaccine.v1.EmbedService",
      "vaccine.v1.FineTuneService",
      "vaccine.v1.ScoreService",
    ]);
  });

  it("answers a symbol with its file and dependencies, and NOT_FOUND for unknown symbols", async () => {
    const [found, missing] = await reflect([
      { messageRequest: { case: "fileContainingSymbol", value: "vaccine.v1.AlignService" } },
      { messageRequest: { case: "fileContainingSymbol", value: "vaccine.v1.Nope" } },
    ]);
    expect(found.messageResponse.case).toBe("fileDescriptorResponse");
    if (found.messageResponse.case === "fileDescriptorResponse") {
      // align.proto plus jobs, training, common, google.rpc.status, any and timestamp.
      expect(found.messageResponse.value.fileDescriptorProto.length).toBeGreaterThanOrEqual(5);
    }
    expect(missing.messageResponse.case).toBe("errorResponse");
    if (missing.messageResponse.case === "errorResponse") expect(missing.messageResponse.value.errorCode).toBe(Code.NotFound);
  });
});
