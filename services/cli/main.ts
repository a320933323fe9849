// The `vaccine` command (bin/vaccine.mjs): runs the CLI on this process's argv and streams.
// With an OTEL_* traces exporter set, a client command is a trace: a span for the command, a
// CLIENT span per RPC under it, continued by the server (so Create, Watch and Get are one).
// `serve` sets up the server's own telemetry.
import { exporterNames, telemetryProblems } from "../platform/telemetry-env.ts";
import { runCli } from "./cli.ts";

const argv = process.argv.slice(2);
const io = { stdout: process.stdout, stderr: process.stderr, env: process.env };
const env = { ...process.env, OTEL_METRICS_EXPORTER: "none" };
const command = argv.find((a) => !a.startsWith("-"));
const problems = telemetryProblems(env);
if (command === "serve" || exporterNames(env, "TRACES").length === 0) {
  process.exitCode = await runCli(argv, io);
} else if (problems.length > 0) {
  process.stderr.write(`error: ${problems.join("; ")}\n`);
  process.exitCode = 2;
} else {
  const { SCOPE, setupTelemetry } = await import("../platform/telemetry.ts");
  const telemetry = setupTelemetry({ serviceName: "vaccine-cli", env, global: true });
  process.exitCode = await telemetry.tracerProvider.getTracer(SCOPE).startActiveSpan(`vaccine ${command ?? ""}`.trim(), async (span) => {
    try {
      return await runCli(argv, io);
    } finally {
      span.end();
    }
  });
  await telemetry.shutdown();
}
