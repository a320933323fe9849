/** gRPC clients of the suite, over one HTTP/2 connection to --address. */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import type { Env } from "./args.ts";

export const DEFAULT_ADDRESS = "http://127.0.0.1:50051";

/** --address, else VACCINE_ADDRESS, else the default; "host:port" gets http:// (the server is cleartext). */
export function resolveAddress(flag: string | undefined, env: Env): string {
  const address = flag ?? env.VACCINE_ADDRESS ?? DEFAULT_ADDRESS;
  return /^https?:\/\//.test(address) ? address : `http://${address}`;
}

export function createClients(address: string) {
  const transport = createGrpcTransport({ baseUrl: address });
  return {
    align: createClient(AlignService, transport),
    fineTune: createClient(FineTuneService, transport),
    embed: createClient(EmbedService, transport),
    score: createClient(ScoreService, transport),
    health: createClient(Health, transport),
  };
}

export type Clients = ReturnType<typeof createClients>;
