import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { metrics, trace, type MeterProvider, type TracerProvider } from "@opentelemetry/api";
import { CallSlots, DEFAULT_INFERENCE_CONCURRENCY } from "../../services/common/call-slots.ts";
import { createDeps, type ProcessDeps } from "../../services/suite/create-deps.ts";
import { SERVICE_NAMES } from "../../services/suite/config.ts";
import { startServer, type RunningServer, type ServerOptions } from "../../services/platform/server.ts";
import { silentLogger } from "../../services/platform/log.ts";
import { SCOPE } from "../../services/platform/telemetry.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { SERVICES } from "../../services/suite/services.ts";
import { putTinyModeration } from "./tiny-moderation.ts";
import { putModel } from "./tiny-store.ts";
import { tinyTokenizer, tinyWorldModel } from "./tiny-world.ts";

export interface TestSuite {
  server: RunningServer;
  deps: ProcessDeps;
  /** The tiny-world model, stored as a base checkpoint. */
  base: { uri: string; digest: string };
  /** Shuts the server down and removes the temp store and job records. */
  close(): Promise<void>;
}

/** createDeps's configuration of a process over a local store and a jobs folder in `root`, serving every service unless `overrides` say otherwise. */
export function testConfig(root: string, overrides: Partial<Parameters<typeof createDeps>[0]> = {}): Parameters<typeof createDeps>[0] {
  return {
    store: "local",
    storeRoot: join(root, "store"),
    s3Bucket: "",
    s3Prefix: "",
    s3Endpoint: "",
    s3Region: "us-east-1",
    cacheDir: join(root, "cache"),
    jobsDir: join(root, "jobs"),
    maxRunningJobs: 1,
    modelCacheMb: 256,
    maxDatasetMb: 64,
    maxCheckpointMb: 256,
    maxUploadFileMb: 128,
    services: [...SERVICE_NAMES],
    ...overrides,
  };
}

/** Dependencies over a temp local store holding the tiny-world base model, and a temp jobs folder, on the wasm backend. */
export async function testDeps(
  options: { tracerProvider?: TracerProvider; meterProvider?: MeterProvider; maxRunningJobs?: number; maxDatasetMb?: number; maxCheckpointMb?: number; maxUploadFileMb?: number } = {},
) {
  // The backend a server picks here (services/suite/run.ts, "auto" without tfjs-node), not tfjs's pure-JS default.
  await selectBackend("wasm", () => {});
  const root = mkdtempSync(join(tmpdir(), "vaccine-suite-"));
  const deps = createDeps(
    testConfig(root, { maxRunningJobs: options.maxRunningJobs ?? 1, maxDatasetMb: options.maxDatasetMb ?? 64, maxCheckpointMb: options.maxCheckpointMb ?? 256, maxUploadFileMb: options.maxUploadFileMb ?? 128 }),
    {
      tracer: (options.tracerProvider ?? trace.getTracerProvider()).getTracer(SCOPE),
      meter: (options.meterProvider ?? metrics.getMeterProvider()).getMeter(SCOPE),
    },
    silentLogger,
  );
  const model = tinyWorldModel(tinyTokenizer());
  const base = await putModel(deps.store, model);
  model.dispose();
  deps.builtins = { base, moderation: await putTinyModeration(deps.store), refusal: await putTinyModeration(deps.store, undefined, ["refusal"]) };
  // As services/suite/run.ts does, where a test can hold the slots.
  deps.inferenceSlots = new CallSlots(DEFAULT_INFERENCE_CONCURRENCY);
  return { deps, base, root };
}

/** All four services on 127.0.0.1, port 0, over a temp store and jobs folder; `server` adds TLS, access control or limits. */
export async function startSuite(
  options: { tracerProvider?: TracerProvider; meterProvider?: MeterProvider; server?: Omit<ServerOptions, "services"> } = {},
): Promise<TestSuite> {
  const { deps, base, root } = await testDeps(options);
  const server = await startServer({
    services: Object.values(SERVICES).map((make) => make(deps)),
    host: "127.0.0.1",
    port: 0,
    tracerProvider: options.tracerProvider,
    shutdownTimeoutMs: 5000,
    ...options.server,
  }).catch(async (err: unknown) => {
    // A start refused on purpose (a test of a bad setting) leaves no executor or temp folder behind.
    await deps.executor?.shutdown();
    rmSync(root, { recursive: true, force: true });
    throw err;
  });
  server.onShutdown(() => deps.executor!.shutdown());
  return {
    server,
    deps,
    base,
    close: async () => {
      await server.shutdown();
      rmSync(root, { recursive: true, force: true });
    },
  };
}
