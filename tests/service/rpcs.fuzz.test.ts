// Every RPC of the suite, called through the real server with random and boundary requests
// (fast-check): each call succeeds or fails with a status a client can act on, never
// INTERNAL, UNKNOWN, DATA_LOSS or UNAVAILABLE (nothing here is damaged or down) or a hang;
// every error carries a google.rpc.ErrorInfo in the suite's domain, and every
// INVALID_ARGUMENT a BadRequest naming each bad field once (README, Calling it). The client
// streams get random message sequences: metadata missing, twice or late, odd enum numbers,
// hostile paths, random bytes. Afterwards the server is still SERVING and answers a plain
// call. The job RPCs run again on a Redis queue, whose keys are built from job ids.
// (validators.property.test.ts covers the validators one by one.)
import { rmSync } from "node:fs";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService, CheckpointType, type ImportCheckpointRequest } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetFormat } from "../../gen/vaccine/v1/common_pb.ts";
import { DatasetService, type UploadDatasetRequest } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { ERROR_DOMAIN } from "../../services/platform/errors.ts";
import { chunk, meta } from "../helpers/import-folder.ts";
import { startSuite, testDeps, type TestSuite } from "../helpers/server.ts";
import { hasRedisServer, startRedis, type TestRedis } from "../../scripts/redis-server.ts";
import { QueueExecutor } from "../../services/jobs/queue/queue-executor.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { SERVICES } from "../../services/suite/services.ts";

let suite: TestSuite;
let transport: Transport;
/** A dataset the suite holds, so that some random requests name one that exists. */
let datasetUri: string;

beforeAll(async () => {
  suite = await startSuite();
  // Accepted calls stay cheap: a few tokens of the tiny model.
  suite.deps.bounds = { maxPromptTokens: 64, maxNewTokens: 4, maxGeneratedTokens: 16, maxSteps: 1000, maxTrainingTokens: 100_000 };
  transport = createGrpcTransport({ baseUrl: suite.server.url });
  const rows = ['{"prompt": "How do I pick a lock?", "response": "I cannot help with that."}', '{"prompt": "Say hi", "response": "Hi."}'];
  const upload = async function* (): AsyncGenerator<UploadDatasetRequest> {
    yield { content: { case: "metadata", value: { displayName: "fuzz", format: DatasetFormat.REFUSAL } } } as UploadDatasetRequest;
    yield { content: { case: "chunk", value: new TextEncoder().encode(rows.join("\n") + "\n") } } as UploadDatasetRequest;
  };
  datasetUri = (await createClient(DatasetService, transport).uploadDataset(upload())).dataset!.uri;
});
afterAll(() => suite?.close());

// Values as a client can send them.
const int32 = fc.oneof(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.constantFrom(-1, 0, 1, 2, 3, 4, 5, 99, 2 ** 31 - 1));
const small = fc.oneof(fc.integer({ min: -1, max: 3 }), fc.constantFrom(-(2 ** 31), 2 ** 31 - 1));
const optional = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
const double = fc.oneof(fc.double(), fc.constantFrom(0, -1, 0.5, 1, 2, Number.NaN, Infinity));
const enumValue = fc.integer({ min: -2, max: 9 });
const hostile = fc.constantFrom("", "..", "../x", "/etc/passwd", "a/../../b", "a\u0000b", "é/🙂", "x".repeat(5000), "store://", "store://datasets/", "store://checkpoints/../datasets/x", "s3://bucket/key");
const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const words = fc.array(fc.constantFrom("the", "cat", "harm", "ok", "a", "é", "\u0000", "🙂"), { maxLength: 12 }).map((w) => w.join(" "));
const text = fc.oneof(words, fc.string({ unit: "binary", maxLength: 30 }));
/** Mostly plausible values with the wild ones mixed in, so that calls reach past validation too. */
const mostly = <T, U>(plausible: fc.Arbitrary<T>, wild: fc.Arbitrary<U>): fc.Arbitrary<T | U> => fc.oneof({ arbitrary: plausible, weight: 4 }, { arbitrary: wild, weight: 1 });
const pageSize = mostly(fc.integer({ min: 0, max: 5 }), int32);
const pageToken = mostly(fc.constant(""), fc.oneof(fc.string({ unit: "binary" }), hostile, fc.base64String()));

const results = { ok: 0, refused: 0 };
const codes = new Set<Code>();
/** Each property reached past validation and was refused, both many times, or it tested one side only. */
function bothSides() {
  expect(results.ok, "accepted calls").toBeGreaterThan(5);
  expect(results.refused, "refused calls").toBeGreaterThan(10);
  results.ok = results.refused = 0;
}

/** Success, or an error a client can act on: a known code and the suite's ErrorInfo. Not a hang: 30 s is far beyond any call here. */
async function handled(call: (options: { timeoutMs: number }) => Promise<unknown>) {
  try {
    await call({ timeoutMs: 30_000 });
    results.ok++;
  } catch (err) {
    results.refused++;
    const ce = ConnectError.from(err);
    codes.add(ce.code);
    // Nothing here is damaged or down: DATA_LOSS or UNAVAILABLE would report a client's mistake
    // as damage, or as worth retrying.
    expect([Code.Internal, Code.Unknown, Code.DeadlineExceeded, Code.Canceled, Code.DataLoss, Code.Unavailable], `${Code[ce.code]}: ${ce.message}`).not.toContain(ce.code);
    const info = ce.findDetails(ErrorInfoSchema)[0];
    expect(info?.reason, `no ErrorInfo on ${Code[ce.code]}: ${ce.message}`).toMatch(/^[A-Z][A-Z0-9_]+$/);
    expect(info?.domain).toBe(ERROR_DOMAIN);
    if (ce.code === Code.InvalidArgument) {
      // The fields to fix, each named once.
      const violations = ce.findDetails(BadRequestSchema)[0]?.fieldViolations ?? [];
      expect(violations.length, `no BadRequest on ${ce.message}`).toBeGreaterThan(0);
      for (const f of violations) expect(f.field).not.toBe("");
      expect(new Set(violations.map((f) => `${f.field}: ${f.description}`)).size, ce.message).toBe(violations.length);
    }
  }
}

/** A client stream of the given messages. */
async function* streamOf<T>(messages: T[]) {
  yield* messages;
}

/** Drains a server stream, so that errors raised mid-stream count too. */
async function drain(stream: AsyncIterable<unknown>) {
  for await (const _ of stream);
}

/**
 * The job RPCs, Create with parents that do not exist (an accepted spec ends at NOT_FOUND, so
 * no job trains) and Get, Cancel, Watch and List on `jobIds`.
 */
async function jobRpcs(transport: Transport, jobIds: fc.Arbitrary<string>) {
  const align = createClient(AlignService, transport);
  const fineTune = createClient(FineTuneService, transport);
  const missing = { uri: `store://checkpoints/${"0".repeat(64)}`, digest: `sha256:${"0".repeat(64)}` };
  const dataset = mostly(
    fc.oneof(
      fc.record({ source: fc.record({ case: fc.constant("uri" as const), value: fc.constant(datasetUri) }) }),
      fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: fc.constantFrom("alignment", "sst2-mix"), size: fc.constantFrom(10, 20) }) }) }),
    ),
    fc.oneof(
      fc.record({ source: fc.record({ case: fc.constant("uri" as const), value: fc.oneof(fc.constant(datasetUri), hostile) }), format: enumValue }),
      fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: fc.constantFrom("alignment", "sst2-mix", "harmful", "nope", ""), split: enumValue, size: optional(small), harmfulRatio: optional(double) }) }), format: enumValue }),
    ),
  );
  const training = mostly(
    optional(fc.record({ maxSteps: optional(fc.integer({ min: 1, max: 5 })), batchSize: optional(fc.integer({ min: 1, max: 4 })) })),
    optional(fc.record({ maxSteps: optional(int32), batchSize: optional(int32), maxSequenceLength: optional(int32), learningRate: optional(double), checkpointEvery: optional(int32) })),
  );
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.record({ kind: fc.constant("align" as const), dataset, training, rho: mostly(optional(fc.constantFrom(0, 0.5, 2)), optional(double)) }),
        fc.record({ kind: fc.constant("fineTune" as const), dataset, training, fraction: mostly(optional(fc.constantFrom(0, 0.1, 1)), optional(double)) }),
        fc.record({ kind: fc.constantFrom("get" as const, "cancel" as const, "watch" as const), fine: fc.boolean(), jobId: jobIds, afterSequence: mostly(fc.nat(3), int32) }),
        fc.record({ kind: fc.constant("list" as const), fine: fc.boolean(), pageSize, pageToken }),
      ),
      async (r) => {
        switch (r.kind) {
          case "align":
            return handled((o) => align.createAlignJob({ spec: { baseCheckpoint: missing, dataset: r.dataset, training: r.training, method: r.rho === undefined ? { case: "sft", value: {} } : { case: "vaccine", value: { rho: r.rho } } } }, o));
          case "fineTune":
            return handled((o) => fineTune.createFineTuneJob({ spec: { alignedCheckpoint: missing, dataset: r.dataset, training: r.training, guard: r.fraction === undefined ? { case: undefined } : { case: "safetyMix", value: { fraction: r.fraction } } } }, o));
          case "get":
            return handled((o) => (r.fine ? fineTune.getFineTuneJob({ jobId: r.jobId }, o) : align.getAlignJob({ jobId: r.jobId }, o)));
          case "cancel":
            return handled((o) => (r.fine ? fineTune.cancelFineTuneJob({ jobId: r.jobId }, o) : align.cancelAlignJob({ jobId: r.jobId }, o)));
          case "watch":
            return handled((o) => drain(r.fine ? fineTune.watchFineTuneJob({ jobId: r.jobId, afterSequence: r.afterSequence }, o) : align.watchAlignJob({ jobId: r.jobId, afterSequence: r.afterSequence }, o)));
          case "list":
            return handled((o) => (r.fine ? fineTune.listFineTuneJobs({ pageSize: r.pageSize, pageToken: r.pageToken }, o) : align.listAlignJobs({ pageSize: r.pageSize, pageToken: r.pageToken }, o)));
        }
      },
    ),
    { numRuns: 150 },
  );
  bothSides();
}

describe("every RPC, through the server", () => {
  it("datasets: upload, get, list, download and delete", async () => {
    const datasets = createClient(DatasetService, transport);
    const uri = fc.oneof(fc.constant(datasetUri), hex64.map((h) => `store://datasets/${h}`), hostile, fc.string());
    const uploadMessage: fc.Arbitrary<UploadDatasetRequest> = fc.oneof(
      fc.record({ displayName: fc.oneof(text, hostile), format: enumValue, expectedSha256: fc.oneof(fc.constant(""), hex64, fc.string()), encoding: enumValue }).map((value) => ({ content: { case: "metadata", value } }) as UploadDatasetRequest),
      fc
        .oneof(
          fc.uint8Array({ maxLength: 64 }),
          fc.constantFrom('{"prompt": "p", "response": "r"}\n', '[{"instruction": "i", "output": "o"}]', "{}\n", "null\n", '{"prompt": 1}\n', "\n\n", '"\\ud800"\n').map((s) => new TextEncoder().encode(s)),
        )
        .map((value) => ({ content: { case: "chunk", value } }) as UploadDatasetRequest),
      fc.constant({ content: { case: undefined } } as UploadDatasetRequest),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({
            kind: fc.constant("upload" as const),
            messages: mostly(
              fc.tuple(fc.constantFrom(0, 1, 2, 3), fc.array(fc.constantFrom('{"prompt": "p", "response": "r"}\n', '{"instruction": "i", "output": "o"}\n', '{"sentence": "s", "label": 1}\n'), { minLength: 1, maxLength: 3 })).map(([format, rows]) => [
                { content: { case: "metadata", value: { displayName: "f", format } } } as UploadDatasetRequest,
                ...rows.map((row) => ({ content: { case: "chunk", value: new TextEncoder().encode(row) } }) as UploadDatasetRequest),
              ]),
              fc.array(uploadMessage, { maxLength: 5 }),
            ),
          }),
          fc.record({ kind: fc.constantFrom("get" as const, "download" as const, "delete" as const), uri }),
          fc.record({ kind: fc.constant("list" as const), pageSize, pageToken }),
        ),
        async (r) => {
          switch (r.kind) {
            case "upload":
              return handled((o) => datasets.uploadDataset(streamOf(r.messages), o));
            case "get":
              return handled((o) => datasets.getDataset({ uri: r.uri }, o));
            case "download":
              return handled((o) => drain(datasets.downloadDataset({ uri: r.uri }, o)));
            // The suite's own dataset is kept for the other properties.
            case "delete":
              return r.uri === datasetUri ? undefined : handled((o) => datasets.deleteDataset({ uri: r.uri }, o));
            case "list":
              return handled((o) => datasets.listDatasets({ pageSize: r.pageSize, pageToken: r.pageToken }, o));
          }
        },
      ),
      { numRuns: 150 },
    );
    bothSides();
  });

  it("checkpoints: import, get, list and export", async () => {
    const checkpoints = createClient(CheckpointService, transport);
    const ref = fc.oneof(
      fc.constant({ uri: suite.base.uri, digest: suite.base.digest }),
      fc.record({ uri: fc.constant(suite.base.uri), digest: fc.oneof(hex64.map((h) => `sha256:${h}`), fc.string()) }),
      fc.record({ uri: fc.oneof(hostile, fc.string(), hex64.map((h) => `store://checkpoints/${h}`)), digest: fc.oneof(fc.constant(""), hex64.map((h) => `sha256:${h}`)) }),
    );
    const files = fc.constantFrom("config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "model.safetensors.index.json", "a/b.json", ".hidden");
    const data = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.constantFrom("{}", "[]", '{"architectures": ["LlamaForCausalLM"], "hidden_size": -1}', '{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}', "\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0008{}      ").map((s) => new TextEncoder().encode(s)),
      // A safetensors header that claims far more than it holds.
      fc.constant(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])),
    );
    const importMessage: fc.Arbitrary<ImportCheckpointRequest> = fc.oneof(
      fc.record({ type: enumValue, base: optional(ref), displayName: optional(fc.oneof(text, hostile)) }).map((m) => meta(m as never)),
      fc.record({ path: fc.oneof(files, hostile), data }).map((c) => chunk(c.path, c.data)),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({
            kind: fc.constant("import" as const),
            messages: mostly(
              fc.array(fc.record({ path: files, data }).map((c) => chunk(c.path, c.data)), { maxLength: 4 }).map((rest) => [meta({ type: CheckpointType.BASE_MODEL }), ...rest]),
              fc.array(importMessage, { maxLength: 5 }),
            ),
          }),
          fc.record({ kind: fc.constant("get" as const), checkpoint: mostly(ref, fc.constant(undefined)) }),
          fc.record({ kind: fc.constant("list" as const), pageSize, pageToken, type: enumValue }),
          fc.record({ kind: fc.constant("export" as const), checkpoint: mostly(ref, fc.constant(undefined)), format: mostly(fc.constantFrom(0, 1, 2, 3), enumValue), dtype: mostly(fc.constantFrom(0, 1, 2, 3), enumValue) }),
        ),
        async (r) => {
          switch (r.kind) {
            case "import":
              return handled((o) => checkpoints.importCheckpoint(streamOf(r.messages), o));
            case "get":
              return handled((o) => checkpoints.getCheckpoint({ checkpoint: r.checkpoint }, o));
            case "list":
              return handled((o) => checkpoints.listCheckpoints({ pageSize: r.pageSize, pageToken: r.pageToken, type: r.type }, o));
            case "export":
              return handled((o) => drain(checkpoints.exportCheckpoint({ checkpoint: r.checkpoint, format: r.format, dtype: r.dtype }, o)));
          }
        },
      ),
      { numRuns: 150 },
    );
    bothSides();
  });

  it("jobs: create, get, list, cancel and watch, for alignment and fine-tuning", () =>
    jobRpcs(transport, fc.oneof(fc.tuple(fc.constantFrom("align", "finetune"), fc.uuid()).map(([k, u]) => `${k}-${u}`), fc.uuid(), fc.string({ unit: "binary" }), hostile)));

  it("score and embed: harmful score, task accuracy and drift", async () => {
    const score = createClient(ScoreService, transport);
    const embed = createClient(EmbedService, transport);
    const base = { uri: suite.base.uri, digest: suite.base.digest };
    const ref = mostly(fc.constant(base), optional(fc.record({ uri: fc.oneof(hostile, fc.string()), digest: fc.string() })));
    const model = mostly(fc.constant(undefined), ref);
    const dataset = mostly(
      fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: fc.constantFrom("harmful-eval", "sst2-mix", "agnews-mix", "gsm8k-mix"), size: fc.constantFrom(1, 2) }) }) }),
      optional(
        fc.oneof(
          fc.record({ source: fc.record({ case: fc.constant("uri" as const), value: fc.oneof(fc.constant(datasetUri), hostile) }), format: enumValue }),
          fc.record({ source: fc.record({ case: fc.constant("builtin" as const), value: fc.record({ name: fc.constantFrom("harmful-eval", "sst2-mix", "alignment", "nope"), split: enumValue, size: optional(small) }) }), format: enumValue }),
        ),
      ),
    );
    const count = mostly(optional(fc.integer({ min: 0, max: 3 })), optional(small));
    const tokens = mostly(optional(fc.integer({ min: 1, max: 4 })), optional(small));
    // Accepted calls read one or two prompts; the wild values are refused before any work.
    const limit = fc.oneof({ arbitrary: fc.integer({ min: 1, max: 2 }), weight: 4 }, { arbitrary: int32, weight: 1 });
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ kind: fc.constant("harm" as const), checkpoint: ref, prompts: dataset, limit, maxNewTokens: tokens, threshold: mostly(optional(fc.double({ min: 0, max: 1, noNaN: true })), optional(double)), sampleCount: count, moderationModel: model, refusalModel: model }),
          fc.record({ kind: fc.constant("task" as const), checkpoint: ref, dataset, task: mostly(fc.constantFrom(0, 1, 2, 3), enumValue), limit, maxNewTokens: tokens, sampleCount: count }),
          fc.record({ kind: fc.constant("drift" as const), reference: ref, candidate: ref, probeDataset: dataset, probeSize: mostly(optional(fc.integer({ min: 1, max: 2 })), optional(small)) }),
          fc.record({ kind: fc.constant("embed" as const), checkpoint: ref, texts: fc.array(text, { maxLength: 3 }), layers: fc.array(small, { maxLength: 3 }), includeFinalHidden: fc.boolean(), pooling: mostly(fc.constantFrom(0, 1, 2, 3), enumValue) }),
        ),
        async (r) => {
          switch (r.kind) {
            case "harm": {
              const { kind: _, ...req } = r;
              return handled((o) => drain(score.scoreHarmfulness(req, o)));
            }
            case "task": {
              const { kind: _, ...req } = r;
              return handled((o) => drain(score.scoreTask(req, o)));
            }
            case "drift": {
              const { kind: _, ...req } = r;
              return handled((o) => embed.computeDrift(req, o));
            }
            case "embed": {
              const { kind: _, ...req } = r;
              return handled((o) => embed.embed(req, o));
            }
          }
        },
      ),
      { numRuns: 150 },
    );
    bothSides();
  });

  afterAll(async () => {
    // The server is still up and answers a plain call; refusals were not all of one kind.
    expect((await createClient(Health, transport).check({ service: "" })).status).toBe(S.SERVING);
    expect((await createClient(DatasetService, transport).getDataset({ uri: datasetUri })).dataset?.uri).toBe(datasetUri);
    expect(codes).toContain(Code.InvalidArgument);
    expect(codes).toContain(Code.NotFound);
  });
});

describe.skipIf(!hasRedisServer())("job RPCs on the Redis queue", () => {
  let redis: TestRedis;
  let server: RunningServer;
  let root: string;
  let job: string;
  beforeAll(async () => {
    redis = await startRedis();
    const made = await testDeps();
    root = made.root;
    await made.deps.executor!.shutdown();
    made.deps.executor = new QueueExecutor({ url: redis.url, prefix: "fuzz" });
    server = await startServer({ services: Object.values(SERVICES).map((make) => make(made.deps)), host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000 });
    // A real job, cancelled at once (no worker runs here), so that a Watch of it ends.
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: server.url }));
    const spec = { baseCheckpoint: made.base, dataset: { source: { case: "builtin" as const, value: { name: "alignment", size: 10 } } }, method: { case: "sft" as const, value: {} }, training: { maxSteps: 1 } };
    job = (await align.createAlignJob({ spec })).job!.id;
    await align.cancelAlignJob({ jobId: job });
  }, 60_000);
  afterAll(async () => {
    await server?.shutdown();
    await redis?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  // The queue builds Redis keys from job ids: ids made from a real one name its other keys.
  it("jobs, with ids made from a real job's", () =>
    jobRpcs(
      createGrpcTransport({ baseUrl: server.url }),
      fc.oneof(fc.constant(job), fc.constantFrom(":events", ":lock", " ", "x").map((s) => job + s), fc.constant(job.replace("align-", "finetune-")), fc.string({ unit: "binary" }), hostile),
    ));
});
