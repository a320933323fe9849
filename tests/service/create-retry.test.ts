// A Create retried with its request_id (align.proto) gets the job the first one made, however
// often and however concurrently it is sent; another spec under the same id is refused. On a
// real server (port 0), through AlignService and FineTuneService.
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobKind, JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import { jobIdFor } from "../../services/jobs/new-job.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { datasetBytes, uploadAs } from "../helpers/tenants.ts";

let suite: TestSuite;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let fineTune: ReturnType<typeof createClient<typeof FineTuneService>>;
let datasets: ReturnType<typeof createClient<typeof DatasetService>>;
let data: string;

beforeAll(async () => {
  suite = await startSuite();
  const transport = createGrpcTransport({ baseUrl: suite.server.url });
  align = createClient(AlignService, transport);
  fineTune = createClient(FineTuneService, transport);
  datasets = createClient(DatasetService, transport);
  data = (await uploadAs({ datasets }, datasetBytes(""))).uri;
});
afterAll(() => suite.close());

const spec = (maxSteps: number) => ({
  baseCheckpoint: suite.base,
  dataset: { source: { case: "uri" as const, value: data } },
  method: { case: "sft" as const, value: {} },
  lora: { rank: 4, alpha: 8, dropout: 0 },
  training: { maxSteps, batchSize: 3, learningRate: 0.01, maxSequenceLength: 64 },
});

describe("Create with a request_id", () => {
  it("refuses the same request_id with another spec, and a request_id that is not one", async () => {
    const first = (await align.createAlignJob({ spec: spec(1), requestId: "once" })).job!;
    expect(await rpcFailure(() => align.createAlignJob({ spec: spec(3), requestId: "once" }))).toMatchObject({
      code: Code.AlreadyExists,
      info: { reason: "REQUEST_ID_REUSED", metadata: { field: "request_id", job_id: first.id } },
    });
    for (const requestId of ["x".repeat(65), "has space", "ü"]) {
      const bad = await rpcFailure(() => fineTune.createFineTuneJob({ spec: { alignedCheckpoint: suite.base, dataset: { source: { case: "uri", value: data } } }, requestId }));
      expect(bad, requestId).toMatchObject({ code: Code.InvalidArgument, badRequest: { fieldViolations: [{ field: "request_id" }] } });
    }
    // With what else the request gets wrong, in one answer.
    const both = await rpcFailure(() => align.createAlignJob({ spec: { ...spec(1), lora: { rank: 0 } }, requestId: "has space" }));
    expect(both.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["request_id", "spec.lora.rank"]);
    await align.cancelAlignJob({ jobId: first.id });
  });

  it("makes one job for concurrent and later retries, the job as it is now, even once its dataset is gone", async () => {
    const tries = await Promise.all(Array.from({ length: 5 }, () => align.createAlignJob({ spec: spec(2), requestId: "run-7" })));
    const ids = new Set(tries.map((t) => t.job!.id));
    expect(ids).toEqual(new Set([jobIdFor(JobKind.ALIGN, "", "run-7")]));
    const [id] = ids;
    expect(tries[0].job!.requestId).toBe("run-7");
    expect((await align.listAlignJobs({ pageSize: 100 })).jobs.filter((j) => j.requestId === "run-7")).toHaveLength(1);
    for await (const _ of align.watchAlignJob({ jobId: id }));
    // Its inputs are not checked again: the dataset it read may be gone by the retry, and the
    // server's bounds lowered below its spec.
    await datasets.deleteDataset({ uri: data });
    suite.deps.bounds = { maxSteps: 1 };
    try {
      const again = (await align.createAlignJob({ spec: spec(2), requestId: "run-7" })).job!;
      expect(again).toMatchObject({ id, state: JobState.SUCCEEDED });
    } finally {
      suite.deps.bounds = undefined;
    }
    // Kinds are apart: the same request_id on FineTuneService is another job's.
    expect(jobIdFor(JobKind.FINE_TUNE, "", "run-7")).not.toBe(id);
  }, 60_000);
});
