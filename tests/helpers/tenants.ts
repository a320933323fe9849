// The whole suite on a real server with token authentication and two tenants (team-a,
// team-b) plus an admin of a third: what the tenancy, quota and access-matrix tests call.
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService, UploadDatasetRequestSchema, type Dataset } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import type { JobExecutor } from "../../services/jobs/executor.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { tokenAuthenticator, tokenHash } from "../../services/platform/token-auth.ts";
import { accessPolicy } from "../../services/suite/access.ts";
import type { ProcessDeps } from "../../services/suite/create-deps.ts";
import { SERVICES } from "../../services/suite/services.ts";
import { testDeps } from "./server.ts";
import { EXAMPLES } from "./tiny-world.ts";

export const CALLERS = {
  a: { tenant: "team-a", roles: ["trainer"] },
  b: { tenant: "team-b", roles: ["trainer"] },
  admin: { tenant: "ops", roles: ["admin"] },
} as const;
export type Caller = keyof typeof CALLERS;

export interface Clients {
  align: Client<typeof AlignService>;
  fineTune: Client<typeof FineTuneService>;
  embed: Client<typeof EmbedService>;
  score: Client<typeof ScoreService>;
  datasets: Client<typeof DatasetService>;
  checkpoints: Client<typeof CheckpointService>;
}

export interface TenantSuite {
  server: RunningServer;
  deps: ProcessDeps;
  base: { uri: string; digest: string };
  /** Clients whose every call carries the caller's bearer token. */
  as: Record<Caller, Clients>;
  close(): Promise<void>;
}

const token = (caller: Caller) => `token-of-${caller}`;

/** Every service over a temp store with token auth; `executor` replaces the embedded one (the queue's). */
export async function startTenantSuite(
  options: { quotas?: { jobs: number; storedBytes: number }; executor?: (deps: ProcessDeps) => Promise<JobExecutor> } = {},
): Promise<TenantSuite> {
  const { deps, base, root } = await testDeps();
  if (options.executor) {
    await deps.executor!.shutdown();
    deps.executor = await options.executor(deps);
  }
  deps.quotas = options.quotas;
  const tokens = join(mkdtempSync(join(tmpdir(), "vaccine-tenants-")), "tokens.json");
  writeFileSync(tokens, JSON.stringify(Object.fromEntries(Object.entries(CALLERS).map(([k, v]) => [tokenHash(token(k as Caller)), { ...v, principal: k }]))));
  const server = await startServer({
    services: Object.values(SERVICES).map((make) => make(deps)),
    host: "127.0.0.1",
    port: 0,
    shutdownTimeoutMs: 5000,
    access: { policy: accessPolicy(), authenticator: await tokenAuthenticator(tokens) },
  });
  server.onShutdown(() => deps.executor!.shutdown());
  const clientsOf = (caller: Caller): Clients => {
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${token(caller)}`);
      return next(req);
    };
    const transport = createGrpcTransport({ baseUrl: server.url, interceptors: [auth] });
    const make = <S extends DescService>(s: S) => createClient(s, transport);
    return {
      align: make(AlignService),
      fineTune: make(FineTuneService),
      embed: make(EmbedService),
      score: make(ScoreService),
      datasets: make(DatasetService),
      checkpoints: make(CheckpointService),
    };
  };
  return {
    server,
    deps,
    base,
    as: { a: clientsOf("a"), b: clientsOf("b"), admin: clientsOf("admin") },
    close: async () => {
      await server.shutdown();
      rmSync(root, { recursive: true, force: true });
      rmSync(join(tokens, ".."), { recursive: true, force: true });
    },
  };
}

/** Tiny-world examples as JSONL; `tag` makes the bytes (so the URI) distinct. */
export function datasetBytes(tag: string, rows = EXAMPLES.length): Buffer {
  const examples = EXAMPLES.slice(0, rows).map((e, i) => JSON.stringify(i === 0 ? { ...e, instruction: `${e.instruction} ${tag}`.trim() } : e));
  return Buffer.from(examples.join("\n") + "\n");
}

export async function uploadAs(clients: Pick<Clients, "datasets">, bytes: Uint8Array, displayName = "", options?: CallOptions): Promise<Dataset> {
  async function* messages() {
    yield create(UploadDatasetRequestSchema, { content: { case: "metadata", value: { displayName } } });
    yield create(UploadDatasetRequestSchema, { content: { case: "chunk", value: bytes } });
  }
  return (await clients.datasets.uploadDataset(messages(), options)).dataset!;
}

export const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** A spec that fails no check at Create: the tiny base, a dataset, few steps (SFT, LoRA r 4); `training` overrides. */
export function alignSpec(base: { uri: string; digest: string }, dataset: string, maxSteps = 2, training: { batchSize?: number; learningRate?: number; checkpointEvery?: number } = {}) {
  return {
    baseCheckpoint: base,
    dataset: { source: { case: "uri" as const, value: dataset } },
    method: { case: "sft" as const, value: {} },
    lora: { rank: 4, alpha: 8, dropout: 0 },
    training: { maxSteps, batchSize: 2, learningRate: 0.03, maxSequenceLength: 64, checkpointEvery: 1, ...training },
  };
}
