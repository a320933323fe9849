/**
 * gRPC clients of the suite over one HTTP/2 connection: what the CLI and the experiment call
 * the services with. It knows nothing of either.
 */
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { clientTracing } from "../platform/rpc-tracing.ts";

/** The HTTP/2 session memory (MB) the clients allow: a few messages of the server's largest. */
const MAX_SESSION_MEMORY_MB = 128;

export interface ClientOptions {
  /** For an https:// address: PEM contents; without `ca` the system's CAs verify the server. */
  tls?: {
    ca?: Buffer;
    /** Client certificate and key, for a server that requires mTLS. */
    cert?: Buffer;
    key?: Buffer;
    /** The name the server's certificate must carry (and the SNI), instead of the address's host. */
    serverName?: string;
  };
  /** Sent as "authorization: Bearer <token>" on every call. */
  token?: string;
}

/**
 * Clients of every service at `address`, a URL: http://127.0.0.1:50051 (cleartext HTTP/2) or
 * https://host:port (TLS, ALPN h2).
 */
export function createClients(address: string, options: ClientOptions = {}) {
  const { tls, token } = options;
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcTransport({
    baseUrl: address,
    // Node counts a message queued to send against the session's memory, 10 MB by default, and
    // past it fails the call and every later one on the connection with ENHANCE_YOUR_CALM: room
    // for messages up to the server's limit (16 MiB by default) and an answer past it.
    nodeOptions: { maxSessionMemory: MAX_SESSION_MEMORY_MB, ...(tls && { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName }) },
    // A CLIENT span per call, its context sent as traceparent: a no-op unless the process set up tracing.
    interceptors: [clientTracing(), ...(token ? [bearer] : [])],
  });
  return {
    align: createClient(AlignService, transport),
    fineTune: createClient(FineTuneService, transport),
    embed: createClient(EmbedService, transport),
    score: createClient(ScoreService, transport),
    datasets: createClient(DatasetService, transport),
    checkpoints: createClient(CheckpointService, transport),
    health: createClient(Health, transport),
  };
}

export type Clients = ReturnType<typeof createClients>;
