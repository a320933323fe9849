import type { TracerProvider } from "@opentelemetry/api";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { SERVICES } from "../../services/suite.ts";

/** All four services on 127.0.0.1, port 0. */
export function startSuite(options: { tracerProvider?: TracerProvider } = {}): Promise<RunningServer> {
  return startServer({
    services: Object.values(SERVICES).map((make) => make()),
    host: "127.0.0.1",
    port: 0,
    tracerProvider: options.tracerProvider,
    shutdownTimeoutMs: 2000,
  });
}
