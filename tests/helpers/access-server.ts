// A server with a stand-in AlignService (no model, no store) under the suite's access policy:
// what tests of authentication, roles and rate limits call. Each handler records the
// principal it saw; ListAlignJobs needs reader, CreateAlignJob trainer.
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { pino, type Logger } from "pino";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import type { Authenticator } from "../../services/platform/authenticate.ts";
import { principalOf, type Principal } from "../../services/platform/principal.ts";
import { startServer, type RunningServer, type ServerOptions, type ServiceModule } from "../../services/platform/server.ts";
import { accessPolicy } from "../../services/suite/access.ts";

export interface AccessServer {
  server: RunningServer;
  /** Principals the handlers saw, in call order. */
  seen: (Principal | undefined)[];
  /** Log lines, parsed. */
  logs: Record<string, unknown>[];
  /** The raw log text: to check no secret was written. */
  logText(): string;
  align(transport?: Transport): ReturnType<typeof createClient<typeof AlignService>>;
}

export function standInAlign(seen: (Principal | undefined)[]): ServiceModule {
  return {
    desc: AlignService,
    register(router) {
      router.service(AlignService, {
        listAlignJobs: (_req, ctx) => {
          seen.push(principalOf(ctx));
          return {};
        },
        createAlignJob: (_req, ctx) => {
          seen.push(principalOf(ctx));
          return {};
        },
        async *watchAlignJob(_req, ctx) {
          seen.push(principalOf(ctx));
          throw new ConnectError("stand-in", Code.NotFound);
        },
      });
    },
  };
}

/** `authenticator` is made with the server's logger, so its reload messages are captured too. */
export async function startAccessServer(
  options: Omit<ServerOptions, "services"> & { authenticator?: (logger: Logger) => Promise<Authenticator> },
): Promise<AccessServer> {
  const seen: (Principal | undefined)[] = [];
  const raw: string[] = [];
  const logger: Logger = pino({ level: "debug" }, { write: (line: string) => void raw.push(line) });
  const { authenticator, ...rest } = options;
  const server = await startServer({
    services: [standInAlign(seen)],
    logger,
    shutdownTimeoutMs: 2000,
    ...rest,
    access: { policy: accessPolicy(), authenticator: await authenticator?.(logger), ...options.access },
  });
  return {
    server,
    seen,
    get logs() {
      return raw.map((l) => JSON.parse(l) as Record<string, unknown>);
    },
    logText: () => raw.join(""),
    align: (transport) => createClient(AlignService, transport ?? createGrpcTransport({ baseUrl: server.url })),
  };
}

export const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
