import type { Meter, Tracer } from "@opentelemetry/api";
import { CallSlots } from "../common/call-slots.ts";
import { queueProblem, quietBullmqChecks } from "../jobs/queue/connection.ts";
import { GrantsFileError } from "../platform/grants-file.ts";
import { createLogger, type Logger } from "../platform/log.ts";
import { ServingStatus } from "../platform/health.ts";
import { startServer, type RunningServer } from "../platform/server.ts";
import { reportTelemetry, SCOPE, setupTelemetry } from "../platform/telemetry.ts";
import { selectBackend } from "../runtime/backend.ts";
import { seedBuiltins } from "../runtime/pipeline/builtins.ts";
import { loadConfig, ConfigError, unknownVariables, type Config, type ServiceName } from "./config.ts";
import { createDeps } from "./create-deps.ts";
import { callBounds, securityOptions } from "./security.ts";
import { checkFolder, StartError } from "./start-error.ts";
import { JOB_SERVICES, SERVICES } from "./services.ts";

/**
 * A service process: configuration from the environment, telemetry, the server, and a
 * graceful exit 0 on SIGTERM or SIGINT. `only` fixes the services (one per entrypoint);
 * without it VACCINE_SERVICES decides.
 */
export async function runServices(only?: ServiceName[]): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(err.message + "\n");
    process.exit(2);
  }
  const names = only ?? config.services;
  const logger = createLogger(config.logLevel);
  const unknown = unknownVariables();
  if (unknown.length > 0) logger.warn({ variables: unknown }, "unknown VACCINE_* variables are ignored: check their spelling (README, configuration)");
  try {
    await selectBackend(config.backend, (line) => logger.info(line), { nativeKernels: config.nativeKernels });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
  if (config.queueUrl) quietBullmqChecks();
  const queue = config.queueUrl ? await queueProblem({ url: config.queueUrl, cluster: config.queueCluster }, logger) : undefined;
  if (queue) {
    process.stderr.write(`cannot start: ${queue}\n`);
    process.exit(2);
  }
  const telemetry = setupTelemetry({ serviceName: `vaccine-${config.role === "worker" ? "worker" : names.join("-")}`, host: config.host, global: true });
  reportTelemetry(logger);
  let server: RunningServer;
  try {
    server = await startServices(
      { ...config, services: names },
      { tracer: telemetry.tracerProvider.getTracer(SCOPE), meter: telemetry.meterProvider.getMeter(SCOPE) },
      logger,
    );
  } catch (err) {
    // A file the configuration names (certificate, key, CA, credentials) that cannot be used,
    // or an address it names that cannot be listened on, is a configuration error too: one
    // line and exit 2, not a stack trace.
    const message = err instanceof StartError ? err.message : (listenProblem(err, config) ?? (configuredFileError(err) ? (err as Error).message : undefined));
    if (!message) throw err;
    process.stderr.write(`cannot start: ${message}\n`);
    process.exit(2);
  }
  const stop = async (signal: string) => {
    logger.info({ signal }, "signal received");
    await server.shutdown();
    await telemetry.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));
}

/** Why the configured host or port cannot be listened on, naming the variable; undefined for other errors. */
function listenProblem(err: unknown, config: Config): string | undefined {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e.syscall === "getaddrinfo") return `VACCINE_HOST=${config.host} does not resolve to an address of this machine (${e.code})`;
  if (e.syscall !== "listen") return undefined;
  const variable = config.healthPort !== undefined && e.port === config.healthPort ? "VACCINE_HEALTH_PORT" : "VACCINE_PORT";
  const why: Record<string, string> = {
    EADDRINUSE: `the port is in use (another process listens there: stop it, or set ${variable})`,
    EADDRNOTAVAIL: "the address is not one of this machine's (set VACCINE_HOST)",
    EACCES: `ports below 1024 need privileges (set ${variable})`,
  };
  return `cannot listen on ${e.address}:${e.port}: ${why[e.code ?? ""] ?? e.message}`;
}

function configuredFileError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code ?? "";
  return err instanceof GrantsFileError || ["ENOENT", "EACCES", "EISDIR"].includes(code) || code.startsWith("ERR_OSSL") || code.startsWith("ERR_TLS");
}

/**
 * The services of `config.services` on one server over the configured store, with the
 * shipped checkpoints seeded and running jobs checkpointed at shutdown: what a service
 * process and an in-process experiment both start.
 */
export async function startServices(config: Config, telemetry: { tracer: Tracer; meter: Meter }, logger: Logger): Promise<RunningServer> {
  // The folders it writes, named by their variables if they cannot be used.
  checkFolder(config.store === "local" ? "VACCINE_STORE_ROOT" : "VACCINE_CACHE_DIR", config.store === "local" ? config.storeRoot : config.cacheDir);
  if (!config.queueUrl && config.services.some((n) => JOB_SERVICES.has(n))) checkFolder("VACCINE_JOBS_DIR", config.jobsDir);
  const deps = createDeps(config, telemetry, logger);
  deps.bounds = callBounds(config);
  deps.batching = { windowMs: config.batchWindowMs, maxRows: config.batchMaxRows };
  deps.inferenceSlots = new CallSlots(config.inferenceConcurrency);
  // A store that cannot be reached at start must not stop the process: the shipped
  // checkpoints are then missing until the next start (requests naming them get NOT_FOUND).
  try {
    deps.builtins = await seedBuiltins(deps.store, (name, why) => logger.warn({ name, damage: why }, "a built-in checkpoint's stored copy was damaged: stored again"));
    for (const [name, ref] of Object.entries(deps.builtins)) logger.info({ name, uri: ref.uri, digest: ref.digest }, "builtin checkpoint");
  } catch (err) {
    logger.warn({ error: (err as Error).message }, "could not put the built-in checkpoints into the store");
  }
  // A worker serves health only (for probes); it trains what the api processes enqueue.
  const served = config.role === "worker" ? [] : config.services;
  const modules = served.map((n) => SERVICES[n](deps));
  const server = await startServer({
    services: modules,
    host: config.host,
    port: config.port,
    logger,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    ...(await securityOptions(config, logger)),
  });
  // A job service is NOT_SERVING while its executor takes no jobs (Redis away, the jobs folder
  // held by another process), so a readiness probe sends its calls elsewhere; the server's
  // own status ("") stays SERVING, as the other services still answer.
  const jobServices = modules.filter((_, i) => JOB_SERVICES.has(served[i])).map((m) => m.desc.typeName);
  let told = false;
  const unwatch = jobServices.length
    ? deps.executor?.watchAvailability?.((up, why) => {
        for (const name of jobServices) server.health.set(name, up ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
        if (told || !up) logger[up ? "info" : "warn"]({ services: jobServices }, up ? "job services SERVING again: the executor takes jobs" : `job services NOT_SERVING: the executor takes no jobs (${why})`);
        told = true;
      })
    : undefined;
  if (unwatch) server.onShutdown(async () => unwatch());
  // Running jobs finish their step and write a training state before connections close.
  if (deps.executor) server.onShutdown(() => deps.executor!.shutdown());
  if (deps.jobsView) server.onShutdown(() => deps.jobsView!.shutdown());
  if (deps.jobWorker) {
    server.onShutdown(() => deps.jobWorker!.shutdown());
    deps.jobWorker.start();
    logger.info({ worker: deps.jobWorker.id, concurrency: config.workerConcurrency }, "training queued jobs");
  }
  return server;
}
