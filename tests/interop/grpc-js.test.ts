// A client in another gRPC stack: @grpc/grpc-js with the .proto files loaded at run time.
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const definition = protoLoader.loadSync(["vaccine/v1/align.proto", "grpc/health/v1/health.proto"], {
  includeDirs: ["proto", "vendor"],
  keepCase: true,
  defaults: true,
  enums: String,
});
const pkg = grpc.loadPackageDefinition(definition) as any;

let suite: TestSuite;
let server: TestSuite["server"];
const clients: grpc.Client[] = [];
beforeAll(async () => {
  suite = await startSuite();
  server = suite.server;
});
afterAll(async () => {
  // Close client channels first, so the server's sessions can close.
  for (const c of clients) c.close();
  await suite.close();
});

function client(Ctor: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client) {
  const c = new Ctor(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  clients.push(c);
  return c as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
}

describe("grpc-js interop", () => {
  it("health Check answers SERVING", async () => {
    const health = client(pkg.grpc.health.v1.Health);
    const res = await new Promise<{ status: string }>((resolve, reject) =>
      health.Check({ service: "vaccine.v1.AlignService" }, (err: Error | null, r: { status: string }) => (err ? reject(err) : resolve(r))),
    );
    expect(res.status).toBe("SERVING");
  });

  it("health Watch streams the current status", async () => {
    const health = client(pkg.grpc.health.v1.Health);
    const call = health.Watch({ service: "" }) as grpc.ClientReadableStream<{ status: string }>;
    const first = await new Promise<{ status: string }>((resolve, reject) => {
      call.once("data", resolve);
      call.once("error", reject);
    });
    call.cancel();
    expect(first.status).toBe("SERVING");
  });

  it("a validation error carries google.rpc.Status details in grpc-status-details-bin", async () => {
    const align = client(pkg.vaccine.v1.AlignService);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      align.ListAlignJobs({ page_size: -3 }, (e: grpc.ServiceError | null) => resolve(e!)),
    );
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    const raw = err.metadata.get("grpc-status-details-bin")[0] as Buffer;
    const status = fromBinary(StatusSchema, raw);
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
    const info = status.details.map((d) => anyUnpack(d, ErrorInfoSchema)).find(Boolean);
    const bad = status.details.map((d) => anyUnpack(d, BadRequestSchema)).find(Boolean);
    expect(info?.reason).toBe("FIELD_INVALID");
    expect(bad?.fieldViolations[0].field).toBe("page_size");
  });

  it("an unknown job answers NOT_FOUND with its ErrorInfo reason", async () => {
    const align = client(pkg.vaccine.v1.AlignService);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      align.GetAlignJob({ job_id: "align-nope" }, (e: grpc.ServiceError | null) => resolve(e!)),
    );
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    const status = fromBinary(StatusSchema, err.metadata.get("grpc-status-details-bin")[0] as Buffer);
    expect(anyUnpack(status.details[0], ErrorInfoSchema)?.reason).toBe("JOB_NOT_FOUND");
  });

  it("reads an error message whole: commas, semicolons, percent signs and UTF-8", async () => {
    // grpc-js decodes grpc-message with decodeURI, which leaves an encoded "," or ";" as it is.
    const align = client(pkg.vaccine.v1.AlignService);
    const id = "align-a,b; 100% café";
    const err = await new Promise<grpc.ServiceError>((resolve) => align.GetAlignJob({ job_id: id }, (e: grpc.ServiceError | null) => resolve(e!)));
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details).toBe(`job "${id}" not found`);
  });
});
