import http from "node:http";
import http2 from "node:http2";
import net, { type AddressInfo } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { TracerProvider } from "@opentelemetry/api";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import { HealthRegistry, ServingStatus } from "./health.ts";
import { silentLogger, type Logger } from "./log.ts";
import { registerReflection } from "./reflection.ts";
import { serverTracing } from "./rpc-tracing.ts";

/** One service of the suite as the platform sees it: its contract and how to route it. */
export interface ServiceModule {
  desc: DescService;
  register(router: ConnectRouter): void;
}

export interface ServerOptions {
  services: ServiceModule[];
  host?: string;
  port?: number;
  logger?: Logger;
  tracerProvider?: TracerProvider;
  interceptors?: Interceptor[];
  /** Longest wait for shutdown hooks and open calls before sessions are destroyed. */
  shutdownTimeoutMs?: number;
}

export interface RunningServer {
  port: number;
  /** http://host:port, for clients. */
  url: string;
  health: HealthRegistry;
  /** Work to finish before connections close on shutdown (e.g. save the state of background work). */
  onShutdown(hook: () => Promise<void>): void;
  /** Idempotent graceful shutdown; see the order in the body. */
  shutdown(): Promise<void>;
}

/**
 * Serves the given services, grpc.health.v1 and server reflection on one cleartext port,
 * speaking gRPC, gRPC-Web and Connect (connect-node answers all three). HTTP/2 (prior
 * knowledge) and HTTP/1.1 share the port, so plain curl works as well as gRPC clients.
 */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const logger = options.logger ?? silentLogger;
  const health = new HealthRegistry(options.services.map((s) => s.desc.typeName));
  const stopping = new AbortController();
  const hooks: (() => Promise<void>)[] = [];

  const handler = connectNodeAdapter({
    shutdownSignal: stopping.signal,
    interceptors: [serverTracing(options.tracerProvider), ...(options.interceptors ?? [])],
    routes: (router) => {
      for (const service of options.services) service.register(router);
      health.register(router);
      registerReflection(router, [...options.services.map((s) => s.desc), Health, ServerReflection]);
    },
  });
  const h2 = http2.createServer(handler);
  const h1 = http.createServer(handler);
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  // An HTTP/2 client opens with the connection preface "PRI * HTTP/2.0"; anything else is HTTP/1.
  const server = net.createServer((socket) => {
    socket.once("data", (first) => {
      socket.pause();
      socket.unshift(first);
      if (first.subarray(0, 3).toString("latin1") === "PRI") {
        // http2 takes the bytes already read from the socket's buffer, then reads natively.
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { address, port } = server.address() as AddressInfo;
  const host = address.includes(":") ? `[${address}]` : address;
  health.setAll(ServingStatus.SERVING);
  logger.info({ address, port, services: options.services.map((s) => s.desc.typeName) }, "serving");

  let shutdownPromise: Promise<void> | undefined;
  const shutdown = async () => {
    const timeoutMs = options.shutdownTimeoutMs ?? 10_000;
    // 1. Probes and load balancers see NOT_SERVING first, so no new work is routed here.
    health.setAll(ServingStatus.NOT_SERVING);
    logger.info({ openSessions: sessions.size }, "shutting down");
    // 2. Hooks finish their work (background work saves its state) within the timeout.
    await withTimeout(Promise.allSettled(hooks.map((h) => h())), timeoutMs);
    // 3. Calls still in flight are aborted through connect's shutdown signal.
    stopping.abort();
    // 4. No new connections; open sessions close once their streams end, or are destroyed.
    const closed = Promise.all([
      new Promise<void>((resolve) => server.close(() => resolve())),
      new Promise<void>((resolve) => h1.close(() => resolve())),
    ]);
    for (const session of sessions) session.close();
    h1.closeIdleConnections();
    if (!(await withTimeout(closed, timeoutMs))) {
      for (const session of sessions) session.destroy();
      h1.closeAllConnections();
      await closed;
    }
    logger.info("stopped");
  };

  return {
    port,
    url: `http://${host}:${port}`,
    health,
    onShutdown: (hook) => void hooks.push(hook),
    shutdown: () => (shutdownPromise ??= shutdown()),
  };
}

/** Resolves true when the promise settled in time, false on timeout. */
async function withTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
