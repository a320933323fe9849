/**
 * gRPC clients of the suite over one HTTP/2 connection: what the CLI and the experiment call
 * the services with. It knows nothing of either.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";

/** Clients of every service at `address`, a URL such as http://127.0.0.1:50051 (cleartext HTTP/2). */
export function createClients(address: string) {
  const transport = createGrpcTransport({ baseUrl: address });
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
