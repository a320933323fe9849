// A call of a service or method the server does not serve (a pod per service: a client at the
// wrong one) gets UNIMPLEMENTED with an ErrorInfo naming what is served, in every protocol,
// not connect-es's bare HTTP 404.
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { cli } from "../cli/harness.ts";
import { standInAlign } from "../helpers/access-server.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { rawGrpc } from "../helpers/raw-grpc.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startServer({ services: [standInAlign([])], port: 0 });
});
afterAll(() => server?.shutdown());

const SERVED = "vaccine.v1.AlignService,grpc.health.v1.Health,grpc.reflection.v1.ServerReflection";

describe("calls of what this server does not serve", () => {
  it.each([
    ["gRPC", createGrpcTransport],
    ["gRPC-Web", createGrpcWebTransport],
    ["Connect", createConnectTransport],
  ] as const)("a service it does not serve: UNIMPLEMENTED SERVICE_NOT_SERVED, naming what it serves, over %s", async (_name, make) => {
    const transport = make({ baseUrl: server.url, httpVersion: "2" });
    const e = await rpcFailure(() => createClient(EmbedService, transport).embed({ texts: ["a"] }));
    expect(e).toMatchObject({ code: Code.Unimplemented, info: { reason: "SERVICE_NOT_SERVED", metadata: { service: "vaccine.v1.EmbedService", served: expect.stringContaining("vaccine.v1.AlignService") } } });
    expect(e.message).toMatch(/^vaccine\.v1\.EmbedService is not served here; this server serves vaccine\.v1\.AlignService, /);
    // A server stream too (Connect's streaming protocol ends with its end-of-stream message).
    const watch = async () => {
      for await (const _ of createClient(FineTuneService, transport).watchFineTuneJob({ jobId: "x" }));
    };
    expect(await rpcFailure(watch)).toMatchObject({ code: Code.Unimplemented, info: { reason: "SERVICE_NOT_SERVED", metadata: { service: "vaccine.v1.FineTuneService" } } });
  });

  it("names every service it serves, and a served service's unknown method", async () => {
    const info = (await rpcFailure(async () => Promise.reject((await rawGrpc(server.url, "/vaccine.v1.EmbedService/Embed", new Uint8Array())).error))).info;
    expect(info?.metadata.served.split(",").sort()).toEqual(SERVED.split(",").sort());
    const method = await rpcFailure(async () => Promise.reject((await rawGrpc(server.url, "/vaccine.v1.AlignService/TrainFaster", new Uint8Array())).error));
    expect(method).toMatchObject({ code: Code.Unimplemented, message: "vaccine.v1.AlignService has no method TrainFaster", info: { reason: "METHOD_NOT_FOUND" } });
  });

  it("the CLI lists the jobs of the kind served, says which is not, and names the service it lacks", async () => {
    const list = await cli(["jobs", "list", "--address", server.url]);
    expect(list).toMatchObject({ code: 0, stdout: "no jobs\n", stderr: "finetune jobs: not served at this address\n" });
    // Asked for that kind, it fails as the server answered.
    const finetune = await cli(["jobs", "list", "--kind", "finetune", "--address", server.url]);
    expect(finetune.code).toBe(1);
    expect(finetune.stderr).toMatch(/^error: UNIMPLEMENTED: vaccine\.v1\.FineTuneService is not served here; this server serves /);
    expect(finetune.stderr).toContain("reason: SERVICE_NOT_SERVED");
  });

  it("answers grpc-js, and a plain GET with a plain 404", async () => {
    const c = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError>((resolve) => c.makeUnaryRequest("/vaccine.v1.EmbedService/Embed", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (e) => resolve(e!)));
    c.close();
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(err.details).toMatch(/vaccine\.v1\.EmbedService is not served here/);
    expect((await fetch(`${server.url}/`)).status).toBe(404);
  });
});
