// Shutdown with a client that walked away from a Watch stream mid-job: the server must
// still close within its timeout, not wait on the abandoned connection forever.
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it, vi } from "vitest";
import { DatasetService, UploadDatasetRequestSchema } from "../../gen/vaccine/v1/datasets_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite } from "../helpers/server.ts";
import { alignSpec } from "../helpers/tenants.ts";
import { putExamples } from "../helpers/tiny-store.ts";

const DATA = "store://datasets/shutdown-watch.jsonl";

describe("shutdown", () => {
  it("finishes within its timeout after a client cancelled a Watch stream mid-job", { timeout: 60_000 }, async () => {
    await selectBackend("wasm", () => {});
    const suite = await startSuite();
    await putExamples(suite.deps.store, DATA);
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: suite.server.url }));
    const { job } = await align.createAlignJob({ spec: alignSpec(suite.base, DATA, 200, { batchSize: 3, learningRate: 0.01, checkpointEvery: 50 }) });
    const abort = new AbortController();
    let steps = 0;
    await expect(
      (async () => {
        for await (const r of align.watchAlignJob({ jobId: job!.id }, { signal: abort.signal })) {
          if (r.event?.event.case === "step" && ++steps === 2) abort.abort();
        }
      })(),
    ).rejects.toThrow();
    const t0 = Date.now();
    await suite.close();
    // startSuite's shutdown timeout is 5 s: the step, the state write and the close fit in it twice over.
    expect(Date.now() - t0).toBeLessThan(15_000);
  });

  it("ends an upload that waits for its client's next message with UNAVAILABLE when the shutdown begins", { timeout: 30_000 }, async () => {
    const suite = await startSuite();
    const datasets = createClient(DatasetService, createGrpcTransport({ baseUrl: suite.server.url }));
    let sent = false;
    const upload = rpcFailure(() =>
      datasets.uploadDataset(
        (async function* () {
          yield create(UploadDatasetRequestSchema, { content: { case: "metadata", value: { displayName: "paused" } } });
          yield create(UploadDatasetRequestSchema, { content: { case: "chunk", value: new TextEncoder().encode('{"instruction":"a","output":"b"}\n') } });
          sent = true;
          await new Promise(() => {}); // a client that pauses
        })(),
      ),
    );
    await vi.waitFor(() => expect(sent).toBe(true));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const t0 = Date.now();
    const closed = suite.close();
    const e = await upload;
    // Answered when the shutdown began, not when its timeout (5 s) destroyed the connection,
    // which the client's open request stream holds until then.
    expect(Date.now() - t0).toBeLessThan(2_500);
    expect(e.code).toBe(Code.Unavailable);
    expect(e.info?.reason).toBe("SERVER_SHUTTING_DOWN");
    await closed;
  });
});
