/** serve: run services in this process; health: ask a server whether it serves. */
import { HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from "../../../gen/grpc/health/v1/health_pb.ts";
import { SERVICE_NAMES, type ServiceName } from "../../suite/config.ts";
import type { Command } from "../command.ts";
import { UsageError } from "../errors.ts";
import { int, text } from "../flags.ts";
import { writeJson } from "../output.ts";

const SERVICES = text("services", "<list>", `Comma-separated services to serve: ${SERVICE_NAMES.join(", ")} (default all).`);
const PORT = int("port", "<n>", "Port to listen on; 0 picks a free one (default 50051).");
const HOST = text("host", "<address>", "Address to listen on (default 127.0.0.1).");

const serve: Command = {
  summary: "Run services in this process until SIGTERM or SIGINT (then exit 0).",
  synopsis: "[--services <list>] [--port <n>] [--host <address>]",
  details:
    "Configured like `npm start` by the VACCINE_* variables (see the README); the flags override " +
    "VACCINE_SERVICES, VACCINE_PORT and VACCINE_HOST. Logs (JSON lines) go to stderr, including the " +
    'refs of the built-in checkpoints ("builtin checkpoint").',
  local: true,
  flags: [SERVICES, PORT, HOST],
  async run(ctx) {
    const f = ctx.flags;
    const services = f.get(SERVICES)?.split(",").map((s) => s.trim());
    const unknown = services?.filter((s) => !(SERVICE_NAMES as readonly string[]).includes(s)) ?? [];
    if (services?.length === 0 || unknown.length) throw new UsageError(`--services: expected names from ${SERVICE_NAMES.join(", ")}, got "${f.get(SERVICES)}"`);
    const port = f.get(PORT);
    if (port !== undefined && (port < 0 || port > 65535)) throw new UsageError(`--port: expected 0 to 65535, got ${port}`);
    const host = f.get(HOST);
    if (host === "") throw new UsageError("--host: expected an address");
    // runServices reads its configuration from the environment, like every service process.
    if (port !== undefined) process.env.VACCINE_PORT = String(port);
    if (host !== undefined) process.env.VACCINE_HOST = host;
    // Imported here so client commands do not load the model runtime.
    const { runServices } = await import("../../suite/run.ts");
    await runServices(services ? [...new Set(services as ServiceName[])] : undefined);
    // The server keeps the process alive; runServices exits it on SIGTERM or SIGINT.
  },
};

const SERVICE = text("service", "<name>", 'Fully qualified service, e.g. vaccine.v1.AlignService (default "": the whole server).');

const health: Command = {
  summary: "Check a server's grpc.health.v1 status (exit 1 unless SERVING).",
  synopsis: "[--service <name>]",
  flags: [SERVICE],
  async run(ctx) {
    const res = await ctx.clients().health.check({ service: ctx.flags.get(SERVICE) ?? "" });
    if (ctx.json) writeJson(ctx.stdout, HealthCheckResponseSchema, res);
    else ctx.stdout.write(`${HealthCheckResponse_ServingStatus[res.status]}\n`);
    return res.status === HealthCheckResponse_ServingStatus.SERVING ? 0 : 1;
  },
};

export const SERVER_COMMANDS = { serve, health };
