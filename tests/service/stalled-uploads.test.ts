// A client that stalls in the middle of an upload or an import (VACCINE_STREAM_IDLE_MS, here
// 300 ms): the call ends with DEADLINE_EXCEEDED and STREAM_IDLE, nothing is stored, and the
// temp file or folder the upload had is gone.
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { CheckpointService, CheckpointType } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetFormat } from "../../gen/vaccine/v1/common_pb.ts";
import { DatasetService, type UploadDatasetRequest } from "../../gen/vaccine/v1/datasets_pb.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { chunk, meta } from "../helpers/import-folder.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

let suite: TestSuite;
beforeAll(async () => {
  suite = await startSuite({ server: { limits: { streamIdleMs: 300 } } });
});
afterAll(() => suite?.close());

const transport = () => createGrpcTransport({ baseUrl: suite.server.url });
/** This process's temp entries (the services' defaults, under the OS temp folder). */
const ours = (dir: string) => {
  try {
    return readdirSync(join(tmpdir(), dir)).filter((name) => name.includes(`${process.pid}-`));
  } catch {
    return [];
  }
};

/** The messages, then a stall that lasts until the call has failed; `during` runs 100 ms into it. */
async function* stalling<T>(messages: T[], stalled: AbortSignal, during: () => void): AsyncGenerator<T> {
  yield* messages;
  setTimeout(during, 100);
  await new Promise((r) => stalled.addEventListener("abort", r));
}

/** The call's error, and this process's temp entries in `dir` while it stalled. */
async function refusedAfterStall<T>(messages: T[], dir: string, call: (requests: AsyncIterable<T>) => Promise<unknown>) {
  const stalled = new AbortController();
  let held: string[] = [];
  try {
    const error = await rpcFailure(() => call(stalling(messages, stalled.signal, () => (held = ours(dir)))));
    return { error, held };
  } finally {
    stalled.abort();
  }
}

it("ends a stalled dataset upload, keeps nothing of it, and removes its temp file", async () => {
  const datasets = createClient(DatasetService, transport());
  const before = (await datasets.listDatasets({})).datasets.length;
  const { error, held } = await refusedAfterStall(
    [
      { content: { case: "metadata", value: { displayName: "stalled", format: DatasetFormat.REFUSAL } } } as UploadDatasetRequest,
      { content: { case: "chunk", value: new TextEncoder().encode('{"prompt": "a", "response": "b"}\n') } } as UploadDatasetRequest,
    ],
    "vaccine-uploads",
    (requests) => datasets.uploadDataset(requests),
  );
  expect(error).toMatchObject({ code: Code.DeadlineExceeded, info: { reason: "STREAM_IDLE", metadata: { idle_ms: "300" } } });
  expect(held).toHaveLength(1);
  expect((await datasets.listDatasets({})).datasets.length).toBe(before);
  expect(ours("vaccine-uploads")).toEqual([]);
});

it("ends a stalled checkpoint import the same way, and removes its temp folder", async () => {
  const checkpoints = createClient(CheckpointService, transport());
  const before = (await checkpoints.listCheckpoints({})).checkpoints.length;
  const { error, held } = await refusedAfterStall(
    [meta({ type: CheckpointType.BASE_MODEL, displayName: "stalled" }), chunk("config.json", new TextEncoder().encode("{}"))],
    "vaccine-checkpoints",
    (requests) => checkpoints.importCheckpoint(requests),
  );
  expect(error).toMatchObject({ code: Code.DeadlineExceeded, info: { reason: "STREAM_IDLE" } });
  expect(held).toHaveLength(1);
  expect((await checkpoints.listCheckpoints({})).checkpoints.length).toBe(before);
  expect(ours("vaccine-checkpoints")).toEqual([]);
});
