import { setMaxListeners } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import net, { type AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import type { DescService } from "@bufbuild/protobuf";
import { Code, createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { MeterProvider, TracerProvider } from "@opentelemetry/api";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import { abortedCalls } from "./aborted-calls.ts";
import { authentication, authenticationFirst, authorization, checkPolicyCovers, type AccessOptions } from "./access.ts";
import { audit, type AuditOptions } from "./audit.ts";
import { superviseSession } from "./connections.ts";
import { streamIdleTimeout, unaryDeadline, withDeadlineInRange } from "./deadline.ts";
import { shuttingDown } from "./errors.ts";
import type { FileWatch } from "./file-watch.ts";
import { HealthRegistry, ServingStatus } from "./health.ts";
import { DEFAULT_LIMITS, type Limits } from "./limits.ts";
import { silentLogger, type Logger } from "./log.ts";
import { knownEnumValues } from "./enum-values.ts";
import { answerNotServed } from "./not-served.ts";
import { AUTHORIZATION_FIELDS, authorizationFields, PEER, peerOf, REMOTE_ADDRESS, remoteAddressOf, REQUEST_RESET, requestReset } from "./peer.ts";
import { rateLimit, type RateLimitOptions } from "./rate-limit.ts";
import { registerReflection } from "./reflection.ts";
import { serverTelemetry, statusName } from "./rpc-tracing.ts";
import { createTlsServer, type TlsFiles } from "./tls.ts";
import { withWireErrors, type WireErrorOptions } from "./wire-errors.ts";

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
  /** Where rpc.server.call.duration goes (default: the global meter provider). */
  meterProvider?: MeterProvider;
  interceptors?: Interceptor[];
  /** Longest wait for shutdown hooks and open calls before sessions are destroyed. */
  shutdownTimeoutMs?: number;
  /** TLS (and mTLS with a client CA) on the port; plaintext without. */
  tls?: TlsFiles;
  /** Authentication and the access policy; without an authenticator every call is anonymous with every role. */
  access?: AccessOptions;
  /** Message size, deadlines, streams and connection timeouts; unset fields take DEFAULT_LIMITS. */
  limits?: Partial<Limits>;
  /** Per-tenant request rate; unset: no limit. */
  rateLimit?: RateLimitOptions;
  /** A second, plaintext port serving only grpc.health.v1, for probes that cannot speak TLS (0 picks one). */
  healthPort?: number;
  /** Which methods mutate (each call logged); refusals are logged either way. */
  audit?: AuditOptions;
}

export interface RunningServer {
  port: number;
  /** http://host:port (https with TLS), for clients. */
  url: string;
  /** The plaintext health port, when one was asked for. */
  healthPort?: number;
  health: HealthRegistry;
  /** Work to finish before connections close on shutdown (e.g. save the state of background work). */
  onShutdown(hook: () => Promise<void>): void;
  /** Idempotent graceful shutdown; see the order in the body. */
  shutdown(): Promise<void>;
}

/**
 * Serves the given services, grpc.health.v1 and server reflection on one port, speaking
 * gRPC, gRPC-Web and Connect (connect-node answers all three). HTTP/2 and HTTP/1.1 share the
 * port, so plain curl works as well as gRPC clients: in plaintext the first bytes tell them
 * apart, with TLS the ALPN protocol does.
 */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const logger = options.logger ?? silentLogger;
  const limits: Limits = { ...DEFAULT_LIMITS, ...options.limits };
  const health = new HealthRegistry(options.services.map((s) => s.desc.typeName));
  const stopping = new AbortController();
  // connect links every call in flight to it: more than 10 at once is normal, not a leak.
  setMaxListeners(0, stopping.signal);
  const hooks: (() => Promise<void>)[] = [];
  const access = options.access ?? {};
  if (access.policy) checkPolicyCovers(access.policy, options.services.map((s) => s.desc));
  const host = options.host ?? "127.0.0.1";
  if (!access.authenticator && !isLoopback(host)) {
    logger.warn(
      { host, auth: "none" },
      "AUTHENTICATION IS OFF on a non-loopback address: anyone who reaches this port can read, train on and delete every tenant's data. Set VACCINE_AUTH (token, jwt or mtls).",
    );
  } else if (access.authenticator && access.authenticator.mode !== "mtls" && !options.tls && !isLoopback(host)) {
    // Fine behind a TLS-terminating proxy or a mesh; otherwise every token crosses the network readable.
    logger.warn({ host, auth: access.authenticator.mode, tls: "off" }, "bearer credentials arrive in plaintext on a non-loopback address: set VACCINE_TLS_CERT and VACCINE_TLS_KEY unless a proxy or mesh terminates TLS in front");
  }

  const calls = serverTelemetry(options.tracerProvider, options.meterProvider);
  // Refused before any interceptor: not in the audit log, so logged here, and traced here.
  const onWireError: WireErrorOptions["onError"] = (method, err, header) => {
    const traceId = calls.refused(method, header, err);
    // A call its client cut (cancel, deadline) before sending its message was not refused.
    if (err.code === Code.Canceled || err.code === Code.DeadlineExceeded) return;
    logger.warn(
      { method: `${method.parent.typeName}/${method.name}`, outcome: statusName(err.code), reason: err.findDetails(ErrorInfoSchema)[0]?.reason, error: err.rawMessage, trace_id: traceId },
      "request refused before its handler",
    );
  };
  const wireErrors: WireErrorOptions = { maxMessageBytes: limits.maxMessageBytes, onError: onWireError, authenticate: authenticationFirst(access) };
  // What the router serves, for the answer to calls of anything else.
  const served: DescService[] = [];
  const handler = connectNodeAdapter({
    shutdownSignal: stopping.signal,
    // Larger messages are refused from their length prefix (or Content-Length), before being read.
    readMaxBytes: limits.maxMessageBytes,
    // A misspelt JSON field is refused, not silently left at its default (binary has no names to check).
    jsonOptions: { ignoreUnknownFields: false },
    interceptors: [
      calls.interceptor,
      // Outside access control and the limits, so their refusals are logged too.
      audit(options.audit ?? { mutating: () => false }, logger),
      authentication(access),
      ...(options.rateLimit ? [rateLimit(options.rateLimit)] : []),
      authorization(access),
      unaryDeadline(limits.unaryDeadlineMs),
      streamIdleTimeout(limits.streamIdleMs),
      abortedCalls(),
      knownEnumValues(),
      ...(options.interceptors ?? []),
    ],
    contextValues: (req) => createContextValues().set(PEER, peerOf(req)).set(REMOTE_ADDRESS, remoteAddressOf(req)).set(REQUEST_RESET, requestReset(req)).set(AUTHORIZATION_FIELDS, authorizationFields(req)),
    routes: (router) => {
      for (const service of options.services) service.register(router);
      health.register(router);
      registerReflection(router, [...options.services.map((s) => s.desc), Health, ServerReflection]);
      // The adapter serves router.handlers as they are once this returns.
      router.handlers.splice(0, Infinity, ...router.handlers.map((h) => withWireErrors(withDeadlineInRange(h), wireErrors)));
      served.push(...new Set(router.handlers.map((h) => h.service)));
    },
    fallback: answerNotServed(served, wireErrors.authenticate, (path, err, remote) =>
      logger.warn({ method: path.slice(1), outcome: statusName(err.code), reason: err.findDetails(ErrorInfoSchema)[0]?.reason, remote }, "request refused before its handler"),
    ),
  });
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: limits.maxConcurrentStreams } }, handler);
  const h1 = http.createServer(handler);
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    superviseSession(session, limits, logger);
  });
  // An HTTP/2 client opens with the connection preface "PRI * HTTP/2.0"; anything else is HTTP/1.
  const sniff = (socket: net.Socket) => {
    // A connection that never sends a byte must not stay open.
    socket.setTimeout(limits.handshakeTimeoutMs, () => socket.destroy());
    socket.once("data", (first) => {
      socket.setTimeout(0);
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
  };
  let certificates: FileWatch | undefined;
  let server: net.Server;
  if (options.tls) {
    const front = createTlsServer(options.tls, limits.handshakeTimeoutMs, logger, (socket: TLSSocket) => {
      if (socket.alpnProtocol === "h2") h2.emit("connection", socket);
      else if (socket.alpnProtocol === "http/1.1") h1.emit("connection", socket);
      else sniff(socket); // a client without ALPN
    });
    server = front.server;
    certificates = front.watch;
  } else {
    server = net.createServer(sniff);
  }

  // Every accepted socket, whoever ends up owning it (http2, http1, still sniffing, mid-TLS):
  // the last resort of shutdown, since server.close() waits for each of them.
  const sockets = new Set<net.Socket>();
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  try {
    await listen(server, options.port ?? 0, host);
  } catch (err) {
    certificates?.close();
    access.authenticator?.close();
    throw err;
  }
  const { address, port } = server.address() as AddressInfo;
  const probe = options.healthPort === undefined ? undefined : await startHealthPort(health, options.healthPort, host);
  const shown = address.includes(":") ? `[${address}]` : address;
  health.setAll(ServingStatus.SERVING);
  logger.info(
    {
      address,
      port,
      tls: options.tls ? (options.tls.clientCaFile ? "mtls" : "tls") : "off",
      auth: access.authenticator?.mode ?? "none",
      healthPort: probe?.port,
      services: options.services.map((s) => s.desc.typeName),
    },
    "serving",
  );

  let shutdownPromise: Promise<void> | undefined;
  const shutdown = async () => {
    const timeoutMs = options.shutdownTimeoutMs ?? 10_000;
    // 1. Probes and load balancers see NOT_SERVING first, so no new work is routed here.
    health.setAll(ServingStatus.NOT_SERVING);
    logger.info({ openSessions: sessions.size }, "shutting down");
    // 2. Hooks finish their work (background work saves its state) within the timeout.
    if (!(await withTimeout(Promise.allSettled(hooks.map((h) => h())), timeoutMs))) {
      // A running job could not write its training state in time: it resumes from its last one.
      logger.warn({ timeout_ms: timeoutMs }, "background work (a running job) did not finish within the shutdown timeout; it is abandoned and resumes from its last saved state");
    }
    // 3. Calls still in flight are aborted through connect's shutdown signal (cut streams end UNAVAILABLE).
    stopping.abort(shuttingDown());
    certificates?.close();
    access.authenticator?.close();
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
      for (const socket of sockets) socket.destroy();
      await closed;
    }
    await probe?.close();
    logger.info("stopped");
  };

  return {
    port,
    url: `${options.tls ? "https" : "http"}://${shown}:${port}`,
    healthPort: probe?.port,
    health,
    onShutdown: (hook) => void hooks.push(hook),
    shutdown: () => (shutdownPromise ??= shutdown()),
  };
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

function listen(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/**
 * grpc.health.v1 alone on a plaintext HTTP/2 port: Kubernetes' gRPC probes cannot speak TLS
 * (nor present a client certificate). It reveals serving statuses and nothing else.
 */
async function startHealthPort(health: HealthRegistry, port: number, host: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http2.createServer(connectNodeAdapter({ routes: (router) => health.register(router) }));
  const sessions = new Set<http2.Http2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await listen(server, port, host);
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Probes are short calls: nothing to wait for.
      for (const session of sessions) session.destroy();
      await closed;
    },
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
