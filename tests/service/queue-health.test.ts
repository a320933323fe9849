// An api process's health while its queue's Redis restarts: AlignService and FineTuneService
// turn NOT_SERVING (a readiness probe sends their calls to a replica that can take jobs) and
// SERVING again once Redis is back; the server and the services that need no queue stay
// SERVING throughout.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-queue-health-"));
let api: ServiceProcess | undefined;
let redis: TestRedis | undefined;
afterAll(async () => {
  api?.child.kill("SIGTERM");
  await api?.exited;
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe("health of an api process on a Redis queue", () => {
  it("turns the job services NOT_SERVING while Redis is away, and SERVING once it is back", async () => {
    redis = await startRedis();
    api = await startProcess("dist/services/main.js", {
      VACCINE_QUEUE_URL: redis.url,
      VACCINE_ROLE: "api",
      VACCINE_SERVICES: "align,finetune,embed",
      VACCINE_STORE_ROOT: join(root, "store"),
      VACCINE_BACKEND: "wasm",
    });
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${api.port}` }));
    const statuses = async () => {
      const { statuses } = await health.list({});
      return Object.fromEntries(Object.entries(statuses).map(([name, r]) => [name, ServingStatus[r.status]]));
    };
    const all = (jobs: string) => ({ "": "SERVING", [EmbedService.typeName]: "SERVING", [AlignService.typeName]: jobs, [FineTuneService.typeName]: jobs });
    const until = async (want: Record<string, string>) => {
      for (const end = Date.now() + 15_000; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
        if (isDeepStrictEqual(await statuses(), want)) break;
      }
      expect(await statuses()).toEqual(want);
    };
    expect(await statuses()).toEqual(all("SERVING"));
    await redis.restart(() => until(all("NOT_SERVING")));
    await until(all("SERVING"));
    const said = api.log().split("\n").filter((l) => l.includes("job services")).map((l) => JSON.parse(l));
    expect(said.map((l) => [l.level, l.msg])).toEqual([
      ["warn", `job services NOT_SERVING: the executor takes no jobs (the queue's Redis at 127.0.0.1:${redis!.port} does not answer)`],
      ["info", "job services SERVING again: the executor takes jobs"],
    ]);
    expect(said[0].services).toEqual([AlignService.typeName, FineTuneService.typeName]);
  });
});
