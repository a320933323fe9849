// DatasetService over gRPC on a real server (port 0): streamed uploads validated row by row,
// the size limit while streaming, interrupted uploads, paging, downloads, deletes, and a
// training job on an uploaded dataset.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { DatasetFormat } from "../../gen/vaccine/v1/common_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import {
  type Dataset,
  DatasetEncoding,
  DatasetService,
  type UploadDatasetRequest,
  UploadDatasetRequestSchema,
} from "../../gen/vaccine/v1/datasets_pb.ts";
import { JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import { datasetService } from "../../services/datasets/service.ts";
import { uploadDataset } from "../../services/datasets/upload.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import type { ProcessDeps } from "../../services/suite/create-deps.ts";
import { SERVICES } from "../../services/suite/services.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { testDeps } from "../helpers/server.ts";

import { EXAMPLES } from "../helpers/tiny-world.ts";

const LIMIT = 1024 * 1024;
let server: RunningServer;
let deps: ProcessDeps;
let base: { uri: string; digest: string };
let root: string;
let spoolDir: string;
let datasets: Client<typeof DatasetService>;
let align: Client<typeof AlignService>;

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  ({ deps, base, root } = await testDeps({ maxDatasetMb: LIMIT / 2 ** 20 }));
  spoolDir = join(root, "spool");
  server = await startServer({
    services: Object.entries(SERVICES).map(([name, make]) => (name === "datasets" ? datasetService(deps, { spoolDir }) : make(deps))),
    port: 0,
    shutdownTimeoutMs: 5000,
  });
  server.onShutdown(() => deps.executor!.shutdown());
  const transport = createGrpcTransport({ baseUrl: server.url });
  datasets = createClient(DatasetService, transport);
  align = createClient(AlignService, transport);
});
afterAll(async () => {
  await server.shutdown();
  rmSync(root, { recursive: true, force: true });
});

const jsonl = (rows: object[]) => Buffer.from(rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

type Metadata = { displayName?: string; format?: DatasetFormat; encoding?: DatasetEncoding; expectedSha256?: string };
const metadataMessage = (value: Metadata) => create(UploadDatasetRequestSchema, { content: { case: "metadata", value } });
const chunkMessage = (value: Uint8Array) => create(UploadDatasetRequestSchema, { content: { case: "chunk", value } });

/** The upload's messages: metadata, then the bytes in chunks of chunkBytes. */
async function* messages(bytes: Uint8Array, metadata: Metadata = {}, chunkBytes = 1000): AsyncGenerator<UploadDatasetRequest> {
  yield metadataMessage(metadata);
  for (let at = 0; at < bytes.length; at += chunkBytes) yield chunkMessage(bytes.subarray(at, at + chunkBytes));
}

async function upload(bytes: Uint8Array, metadata: Metadata = {}, chunkBytes?: number): Promise<Dataset> {
  return (await datasets.uploadDataset(messages(bytes, metadata, chunkBytes))).dataset!;
}

/** What is in the store's dataset namespaces, and the upload temp files. */
async function stored() {
  const objects = [...(await deps.store.listObjects("store://datasets")), ...(await deps.store.listObjects("store://dataset-records"))];
  return objects.map((o) => o.uri).sort();
}
const spooled = () => readdirSync(spoolDir);

async function downloadAll(uri: string): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const { chunk } of datasets.downloadDataset({ uri })) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe("uploads", () => {
  it("stores a JSON Lines upload by content and describes it", async () => {
    const bytes = jsonl(EXAMPLES);
    const before = Date.now();
    const dataset = await upload(bytes, { displayName: "tiny alignment" }, 7);
    const hex = sha256(bytes);
    expect(dataset).toMatchObject({
      uri: `store://datasets/${hex}`,
      digest: `sha256:${hex}`,
      displayName: "tiny alignment",
      format: DatasetFormat.ALPACA,
      encoding: DatasetEncoding.JSONL,
      rowCount: BigInt(EXAMPLES.length),
      sizeBytes: BigInt(bytes.length),
    });
    expect(Number(dataset.createTime!.seconds) * 1000).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect((await deps.store.readObject(dataset.uri)).equals(bytes)).toBe(true);
    expect(spooled()).toEqual([]);
  });

  it("stores a JSON array in the format it is given", async () => {
    const bytes = Buffer.from(JSON.stringify([{ sentence: "a fine film", label: 1 }, { sentence: "dull", label: 0 }], null, 2));
    const dataset = await upload(bytes, { format: DatasetFormat.SST2 }, 5);
    expect(dataset).toMatchObject({ format: DatasetFormat.SST2, encoding: DatasetEncoding.JSON_ARRAY, rowCount: 2n });
  });

  it("is idempotent: the same bytes give the same dataset", async () => {
    const bytes = jsonl(EXAMPLES.slice(0, 3));
    const first = await upload(bytes, { displayName: "first" });
    const again = await upload(bytes, { displayName: "second" }, 13);
    expect(again).toEqual(first);
    expect((await stored()).filter((uri) => uri.includes(sha256(bytes)))).toHaveLength(2);
  });

  it("checks the expected sha256", async () => {
    const bytes = jsonl(EXAMPLES.slice(0, 2));
    const before = await stored();
    const e = await rpcFailure(() => upload(bytes, { expectedSha256: "0".repeat(64) }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("DATASET_DIGEST_MISMATCH");
    expect(e.info?.metadata.actual_sha256).toBe(sha256(bytes));
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["metadata.expected_sha256"]);
    expect(await stored()).toEqual(before);
    expect((await upload(bytes, { expectedSha256: sha256(bytes) })).digest).toBe(`sha256:${sha256(bytes)}`);
  });

  it("checks the metadata and the order of the messages", async () => {
    const chunkFirst = async function* () {
      yield chunkMessage(new Uint8Array(1));
    };
    expect((await rpcFailure(() => datasets.uploadDataset(chunkFirst()))).badRequest?.fieldViolations[0].field).toBe("metadata");
    const twice = async function* () {
      yield* messages(jsonl(EXAMPLES));
      yield metadataMessage({});
    };
    expect((await rpcFailure(() => datasets.uploadDataset(twice()))).badRequest?.fieldViolations[0].field).toBe("metadata");
    // A later message with nothing set is named as such, not as a second metadata.
    const empty = async function* () {
      yield* messages(jsonl(EXAMPLES));
      yield create(UploadDatasetRequestSchema, {});
    };
    expect((await rpcFailure(() => datasets.uploadDataset(empty()))).badRequest?.fieldViolations[0]).toMatchObject({ field: "content", description: "is not set: every message after the first is a chunk" });
    const bad = await rpcFailure(() => upload(jsonl(EXAMPLES), { displayName: "x".repeat(257), expectedSha256: "ABC", format: 99 as DatasetFormat }));
    expect(bad.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["metadata.display_name", "metadata.format", "metadata.expected_sha256"]);
  });
});

describe("bad rows refuse the whole upload, naming the lines", () => {
  const good = JSON.stringify(EXAMPLES[0]);
  const cases: [string, Buffer, DatasetFormat, number, RegExp][] = [
    ["non-UTF-8 bytes", Buffer.concat([Buffer.from(`${good}\n{"instruction": "caf`), Buffer.from([0xe9]), Buffer.from('", "output": "x"}\n')]), DatasetFormat.UNSPECIFIED, 2, /not valid UTF-8/],
    ["a lone surrogate escape", Buffer.from(`${good}\n${good}\n{"instruction": "\\ud800", "output": "x"}\n`), DatasetFormat.UNSPECIFIED, 3, /lone high surrogate/],
    ["duplicate keys", Buffer.from(`{"instruction": "a", "output": "b", "output": "c"}\n`), DatasetFormat.UNSPECIFIED, 1, /duplicate key "output"/],
    ["an SST2 label given as the string \"1\"", jsonl([{ sentence: "good", label: 1 }, { sentence: "fine", label: "1" }]), DatasetFormat.SST2, 2, /must be an integer from 0 to 1, got "1"/],
    ["a label out of range", jsonl([{ text: "news", label: 4 }]), DatasetFormat.AGNEWS, 1, /from 0 to 3, got 4/],
    ["a field of the wrong type", jsonl([EXAMPLES[0], { instruction: "a", output: 42 }]), DatasetFormat.ALPACA, 2, /"output" must be a string, got number/],
    ["an oversize row", jsonl([{ instruction: "x".repeat(70_000), output: "y" }]), DatasetFormat.UNSPECIFIED, 1, /row longer than 65536 bytes/],
  ];
  it.each(cases)("%s", async (_, bytes, format, line, reason) => {
    const before = await stored();
    const e = await rpcFailure(() => upload(bytes, { format, displayName: "corpus.jsonl" }, 4096));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("DATASET_INVALID");
    expect(e.info?.metadata).toMatchObject({ line: String(line), invalid_rows: "1", file: "corpus.jsonl" });
    expect(e.badRequest?.fieldViolations).toEqual([expect.objectContaining({ field: `line ${line}`, description: expect.stringMatching(reason) })]);
    expect(e.message).toContain(`corpus.jsonl:${line}:`);
    expect(await stored()).toEqual(before);
    expect(spooled()).toEqual([]);
  });

  it("names the first 100 bad lines and counts the rest", async () => {
    const lines = Array.from({ length: 300 }, (_, i) => (i % 2 ? "{" : JSON.stringify(EXAMPLES[0])));
    const e = await rpcFailure(() => upload(Buffer.from(lines.join("\n"))));
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual(Array.from({ length: 100 }, (_, i) => `line ${2 * i + 2}`));
    expect(e.info?.metadata.invalid_rows).toBe("150");
  });

  it("refuses an upload without rows", async () => {
    const e = await rpcFailure(() => upload(Buffer.from("\n\n")));
    expect(e).toMatchObject({ code: Code.InvalidArgument, info: expect.objectContaining({ reason: "DATASET_EMPTY" }) });
  });
});

describe("limits and interruptions", () => {
  it("refuses an upload over the limit while it streams, keeping nothing", async () => {
    const before = await stored();
    let sent = 0;
    // Endless: only a limit enforced while streaming ends this call.
    async function* endless(): AsyncGenerator<UploadDatasetRequest> {
      yield metadataMessage({});
      const row = Buffer.from(`${JSON.stringify(EXAMPLES[0])}\n`.repeat(1000));
      for (;;) {
        sent += row.length;
        yield chunkMessage(row);
      }
    }
    const e = await rpcFailure(() => datasets.uploadDataset(endless()));
    expect(e.code).toBe(Code.ResourceExhausted);
    expect(e.info).toMatchObject({ reason: "DATASET_TOO_LARGE", metadata: { limit_bytes: String(LIMIT) } });
    // The call ended soon after the limit, not after the client ran out of bytes.
    expect(sent).toBeLessThan(4 * LIMIT);
    expect(await stored()).toEqual(before);
    await vi.waitFor(() => expect(spooled()).toEqual([]));
  });

  it("leaves nothing when the client cancels after half the chunks", async () => {
    const before = await stored();
    const bytes = jsonl(Array.from({ length: 400 }, (_, i) => ({ instruction: `row ${i}`, output: "ok" })));
    const abort = new AbortController();
    const chunks = 20;
    const size = Math.ceil(bytes.length / chunks);
    let sent = 0;
    async function* halfThenCancel(): AsyncGenerator<UploadDatasetRequest> {
      yield metadataMessage({ displayName: "cancelled" });
      for (let i = 0; i < chunks; i++) {
        if (i === chunks / 2) {
          // Let the server take in the first half, then cancel the call.
          await vi.waitFor(() => expect(spooled()).toHaveLength(1));
          abort.abort();
          return;
        }
        sent++;
        yield chunkMessage(bytes.subarray(i * size, (i + 1) * size));
      }
    }
    const e = await rpcFailure(() => datasets.uploadDataset(halfThenCancel(), { signal: abort.signal }));
    expect(e.code).toBe(Code.Canceled);
    expect(sent).toBe(chunks / 2);
    await vi.waitFor(() => expect(spooled()).toEqual([]));
    expect(await stored()).toEqual(before);
    expect((await datasets.listDatasets({ pageSize: 1000 })).datasets.map((d) => d.displayName)).not.toContain("cancelled");
  });

  it("leaves nothing when the client cancels after whole rows", async () => {
    // Every chunk ends on a row, so what arrived is a valid dataset. A Node client's cancel
    // ends the request stream (END_STREAM) and resets it just after, so the server reads a
    // complete upload: only the reset, seen before the bytes are stored, tells it the call is over.
    const before = await stored();
    const rows = (from: number) => jsonl(Array.from({ length: 20 }, (_, i) => ({ instruction: `whole row ${from + i}`, output: "ok" })));
    const total = [0, 1, 2, 3, 4].reduce((n, i) => n + rows(20 * i).length, 0);
    const abort = new AbortController();
    async function* rowsThenCancel(): AsyncGenerator<UploadDatasetRequest> {
      yield metadataMessage({ displayName: "reset" });
      for (let i = 0; i < 5; i++) yield chunkMessage(rows(20 * i));
      // Cancel once the server has read every chunk into its spool.
      await vi.waitFor(() => expect(spooled().map((f) => statSync(join(spoolDir, f)).size)).toEqual([total]));
      abort.abort();
      await new Promise(() => {});
    }
    const e = await rpcFailure(() => datasets.uploadDataset(rowsThenCancel(), { signal: abort.signal }));
    expect(e.code).toBe(Code.Canceled);
    await vi.waitFor(() => expect(spooled()).toEqual([]));
    expect(await stored()).toEqual(before);
    expect((await datasets.listDatasets({ pageSize: 1000 })).datasets.map((d) => d.displayName)).not.toContain("reset");
  });

  it("stores nothing when the call is cancelled after its last message, before the bytes are stored", async () => {
    // The check itself, called directly: a cancel seen before storing stores nothing.
    const before = await stored();
    async function* whole(): AsyncGenerator<UploadDatasetRequest> {
      yield metadataMessage({ displayName: "late cancel" });
      yield chunkMessage(jsonl([{ instruction: "late", output: "ok" }]));
    }
    const e = await rpcFailure(() => uploadDataset(deps, spoolDir, whole(), undefined, () => true));
    expect(e.code).toBe(Code.Canceled);
    expect(e.info?.reason).toBe("CANCELLED");
    expect(spooled()).toEqual([]);
    expect(await stored()).toEqual(before);
    // The same upload not cancelled is stored.
    expect((await uploadDataset(deps, spoolDir, whole(), undefined, () => false)).displayName).toBe("late cancel");
  });

  it("sweeps the temp files of a crashed process at start, and hides bytes stored without a record", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vaccine-spool-"));
    const dead = spawnSync(process.execPath, ["-e", ""]).pid;
    const stale = `${dead}-0a1b2c3d-0000-4000-8000-000000000000.part`;
    const live = `${process.ppid}-0a1b2c3d-0000-4000-8000-000000000001.part`;
    for (const name of [stale, live, "notes.txt"]) writeFileSync(join(dir, name), "x");
    datasetService(deps, { spoolDir: dir });
    await vi.waitFor(() => expect(readdirSync(dir).sort()).toEqual([live, "notes.txt"].sort()));
    rmSync(dir, { recursive: true, force: true });

    // A crash between storing the bytes and the record: the dataset does not exist.
    const bytes = jsonl([{ instruction: "orphan", output: "bytes" }]);
    const uri = `store://datasets/${sha256(bytes)}`;
    await deps.store.putObject(uri, bytes);
    expect((await rpcFailure(() => datasets.getDataset({ uri }))).code).toBe(Code.NotFound);
    expect((await datasets.listDatasets({ pageSize: 1000 })).datasets.map((d) => d.uri)).not.toContain(uri);
    expect((await upload(bytes)).uri).toBe(uri);
  });
});

describe("get, list, download, delete", () => {
  it("pages newest first, downloads the bytes as uploaded, deletes", async () => {
    const uploaded: Dataset[] = [];
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      uploaded.push(await upload(jsonl([{ instruction: `page ${i}`, output: "x" }]), { displayName: `page ${i}` }));
    }
    const all = (await datasets.listDatasets({ pageSize: 1000 })).datasets;
    expect(all.slice(0, 3).map((d) => d.displayName)).toEqual(["page 2", "page 1", "page 0"]);
    const seen: string[] = [];
    let token = "";
    do {
      const page = await datasets.listDatasets({ pageSize: 2, pageToken: token });
      expect(page.datasets.length).toBeLessThanOrEqual(2);
      seen.push(...page.datasets.map((d) => d.uri));
      token = page.nextPageToken;
    } while (token);
    expect(seen).toEqual(all.map((d) => d.uri));
    expect((await datasets.listDatasets({})).datasets.length).toBe(Math.min(all.length, 50));
    // A token that does not decode and one that is not base64url: one violation each.
    for (const pageToken of ["bm9wZQ", "not a token"]) {
      expect((await rpcFailure(() => datasets.listDatasets({ pageToken }))).badRequest?.fieldViolations.map((f) => f.field)).toEqual(["page_token"]);
    }
    expect((await rpcFailure(() => datasets.listDatasets({ pageSize: 1001 }))).code).toBe(Code.InvalidArgument);

    expect((await datasets.getDataset({ uri: uploaded[1].uri })).dataset).toEqual(uploaded[1]);
    expect((await rpcFailure(() => datasets.getDataset({ uri: "store://datasets/../x" }))).badRequest?.fieldViolations[0].field).toBe("uri");
    const unknown = await rpcFailure(() => datasets.getDataset({ uri: `store://datasets/${"0".repeat(64)}` }));
    // The same reason and metadata keys as a job spec's missing dataset (field, uri).
    expect(unknown).toMatchObject({ code: Code.NotFound, info: { reason: "DATASET_NOT_FOUND", metadata: { field: "uri", uri: `store://datasets/${"0".repeat(64)}` } } });

    await datasets.deleteDataset({ uri: uploaded[1].uri });
    expect((await rpcFailure(() => datasets.getDataset({ uri: uploaded[1].uri }))).code).toBe(Code.NotFound);
    expect((await rpcFailure(() => datasets.deleteDataset({ uri: uploaded[1].uri }))).code).toBe(Code.NotFound);
    expect((await rpcFailure(() => downloadAll(uploaded[1].uri))).code).toBe(Code.NotFound);
    expect((await datasets.listDatasets({ pageSize: 1000 })).datasets.map((d) => d.uri)).not.toContain(uploaded[1].uri);
    expect(await stored()).not.toContain(uploaded[1].uri);
  });

  it("leaves a dataset whose record is damaged out of lists, which still show every other; Get is DATA_LOSS", async () => {
    const good = await upload(jsonl([{ instruction: "kept", output: "ok" }]), { displayName: "kept" });
    const damaged = await upload(jsonl([{ instruction: "damaged", output: "ok" }]), { displayName: "damaged record" });
    const hex = damaged.uri.slice("store://datasets/".length);
    await deps.store.putObject(`store://dataset-records/${hex}.json`, Buffer.from("{ not json"));
    const listed = (await datasets.listDatasets({ pageSize: 1000 })).datasets.map((d) => d.uri);
    expect(listed).toContain(good.uri);
    expect(listed).not.toContain(damaged.uri);
    expect((await rpcFailure(() => datasets.getDataset({ uri: damaged.uri }))).info?.reason).toBe("DATASET_RECORD_CORRUPT");
    await deps.store.deleteObject(`store://dataset-records/${hex}.json`);
  });

  it("downloads byte for byte, in chunks, and notices bytes changed in the store", async () => {
    const bytes = jsonl(Array.from({ length: 3000 }, (_, i) => ({ instruction: `Question ${i} é 😀`, output: "answer ".repeat(30) })));
    expect(bytes.length).toBeGreaterThan(LIMIT / 2);
    const dataset = await upload(bytes, {}, 64 * 1024);
    const chunks: Uint8Array[] = [];
    for await (const { chunk } of datasets.downloadDataset({ uri: dataset.uri })) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(1);
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);

    await deps.store.putObject(dataset.uri, Buffer.from(bytes.toString().replace("Question 5", "Question 6")));
    expect(await rpcFailure(() => downloadAll(dataset.uri))).toMatchObject({ code: Code.DataLoss, info: expect.objectContaining({ reason: "DATASET_CORRUPT" }) });
    // The record still there, the bytes gone (a store cleaned by hand): DATA_LOSS, not NOT_FOUND.
    await deps.store.deleteObject(dataset.uri);
    expect(await rpcFailure(() => downloadAll(dataset.uri))).toMatchObject({ code: Code.DataLoss, info: { reason: "DATASET_BYTES_MISSING", metadata: { uri: dataset.uri } } });
  });
});

describe("training on an uploaded dataset", () => {
  /** Three SFT steps of the tiny model on an uploaded dataset. */
  const sftOn = (dataset: Dataset) => ({
    baseCheckpoint: base,
    dataset: { source: { case: "uri" as const, value: dataset.uri }, format: dataset.format },
    method: { case: "sft" as const, value: {} },
    lora: { rank: 4, alpha: 8, dropout: 0 },
    training: { maxSteps: 3, batchSize: 3, learningRate: 0.03, maxSequenceLength: 64 },
  });

  it("aligns the tiny model on the dataset's uri", async () => {
    const dataset = await upload(jsonl(EXAMPLES), { displayName: "train" });
    const { job } = await align.createAlignJob({ spec: sftOn(dataset) });
    for await (const _ of align.watchAlignJob({ jobId: job!.id })) {
      // Drained until the job ends.
    }
    const done = (await align.getAlignJob({ jobId: job!.id })).job!;
    expect(done.state).toBe(JobState.SUCCEEDED);
    expect(done.progress).toMatchObject({ step: 3, totalSteps: 3 });
  });

  it("does not train on a dataset whose stored bytes no longer match its digest: DATA_LOSS, as a download", async () => {
    const bytes = jsonl(EXAMPLES.map((e) => ({ ...e, instruction: `${e.instruction} (damaged copy)` })));
    const dataset = await upload(bytes, { displayName: "damaged" });
    await deps.store.putObject(dataset.uri, Buffer.from(bytes.toString().replace("damaged copy", "damaged cops")));
    const e = await rpcFailure(() => align.createAlignJob({ spec: sftOn(dataset) }));
    expect(e).toMatchObject({ code: Code.DataLoss, info: { reason: "DATASET_CORRUPT", metadata: { uri: dataset.uri } } });
  });
});
