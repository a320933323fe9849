/**
 * `vaccine experiment`: the comparison of runner.ts against a running suite (an address),
 * or against the four services started in this process when no address is given, then
 * the report of report.ts. Reruns resume from out/results.json.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { trace, metrics } from "@opentelemetry/api";
import { createClients, type ClientOptions } from "../client/clients.ts";
import { loadConfig, SERVICE_NAMES } from "../suite/config.ts";
import { silentLogger } from "../platform/log.ts";
import { SCOPE } from "../platform/telemetry.ts";
import { selectBackend } from "../runtime/backend.ts";
import { BUILTIN_CHECKPOINTS, builtinRef } from "../runtime/pipeline/builtins.ts";
import { startServices } from "../suite/run.ts";
import { PRESETS, type Preset } from "./presets.ts";
import { writeReport } from "./report.ts";
import { runExperiment, type Ref, type RunnerHooks } from "./runner.ts";

export interface ExperimentOptions {
  preset: Preset["name"] | Preset;
  out: string;
  /** A running suite; unset starts the services in this process. */
  address?: string;
  /** TLS and token for `address`. */
  client?: ClientOptions;
  /** The base checkpoint; unset uses the shipped base model. */
  base?: Ref;
  hooks?: RunnerHooks;
  /** Cells run at once (default 1); the services started here then train that many jobs at once. */
  parallel?: number;
}

export async function experiment(options: ExperimentOptions): Promise<{ report: string; seconds: number }> {
  const preset = typeof options.preset === "string" ? PRESETS[options.preset] : options.preset;
  const started = Date.now();
  const parallel = options.parallel ?? 1;
  let stop = async () => {};
  let address = options.address;
  if (!address) {
    const config = loadConfig();
    await selectBackend(config.backend, () => {});
    // Its jobs are its own: a server running beside it keeps its jobs folder (one executor per folder).
    const jobsDir = mkdtempSync(join(os.tmpdir(), "vaccine-experiment-jobs-"));
    const server = await startServices(
      // Its own loopback server for its own clients: plaintext, no credentials, jobs in-process.
      { ...config, services: [...SERVICE_NAMES], host: "127.0.0.1", port: 0, tlsCert: "", tlsKey: "", tlsClientCa: "", auth: "none", healthPort: undefined, role: "all", queueUrl: "", maxRunningJobs: parallel, jobsDir },
      { tracer: trace.getTracer(SCOPE), meter: metrics.getMeter(SCOPE) },
      silentLogger,
    );
    address = server.url;
    stop = async () => {
      await server.shutdown();
      rmSync(jobsDir, { recursive: true, force: true });
    };
  }
  try {
    const base = options.base ?? builtinRef("base");
    if (!base) throw new Error(`no shipped base model at ${BUILTIN_CHECKPOINTS.base.dir}: build it (scripts/build-base-model.ts) or pass a base`);
    const results = await runExperiment(preset, createClients(address, options.client), base, options.out, options.hooks, parallel);
    const seconds = (Date.now() - started) / 1000;
    const cpu = os.cpus()[0]?.model ?? "unknown CPU";
    const report = writeReport(results, options.out, { seconds, machine: `${os.cpus().length} x ${cpu}, Node ${process.version}` });
    return { report, seconds };
  } finally {
    await stop();
  }
}
