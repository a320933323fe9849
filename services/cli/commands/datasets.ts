/** datasets upload|list|get|download|delete: DatasetService. */
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { pipeline } from "node:stream/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { DatasetFormat } from "../../../gen/vaccine/v1/common_pb.ts";
import {
  type Dataset,
  DatasetEncoding,
  DeleteDatasetResponseSchema,
  GetDatasetResponseSchema,
  ListDatasetsResponseSchema,
  UploadDatasetRequestSchema,
  UploadDatasetResponseSchema,
} from "../../../gen/vaccine/v1/datasets_pb.ts";
import type { Command, CommandGroup, Context } from "../command.ts";
import { UsageError } from "../errors.ts";
import { choice, int, text } from "../flags.ts";
import { byteProgress } from "../byte-progress.ts";
import { nextPage, table, writeJson } from "../output.ts";
import { DATASET_FORMATS } from "../spec-flags.ts";
import { removedOnInterrupt } from "../partial-output.ts";

/** Upload messages carry at most this much; the contract allows 4 MiB. */
const CHUNK_BYTES = 1024 * 1024;

const ENCODINGS: Record<string, DatasetEncoding> = { jsonl: DatasetEncoding.JSONL, "json-array": DatasetEncoding.JSON_ARRAY };
const formatName = (f: DatasetFormat) => Object.keys(DATASET_FORMATS).find((k) => DATASET_FORMATS[k] === f) ?? "unspecified";
const encodingName = (e: DatasetEncoding) => Object.keys(ENCODINGS).find((k) => ENCODINGS[k] === e) ?? "unspecified";

/** A dataset for people: one field a line, its uri first (what other commands take). */
function describeDataset(d: Dataset): string {
  const rows: [string, string][] = [
    ["uri", d.uri],
    ["digest", d.digest],
    ["name", d.displayName],
    ["format", formatName(d.format)],
    ["encoding", encodingName(d.encoding)],
    ["rows", String(d.rowCount)],
    ["size", `${d.sizeBytes} bytes`],
    ["created", d.createTime ? timestampDate(d.createTime).toISOString() : ""],
  ];
  return rows.filter(([, v]) => v !== "").map(([k, v]) => `${k.padEnd(8)}  ${v}`).join("\n") + "\n";
}

const FORMAT = choice("format", "<format>", "Row format every row must have: alpaca, beavertails, refusal, sst2, agnews, gsm8k (default: the first row's).", DATASET_FORMATS);
const ENCODING = choice("encoding", "<encoding>", 'jsonl or json-array (default: a file starting with "[" is a JSON array).', ENCODINGS);
const NAME = text("name", "<name>", "Name for people (default: the file's name).");

const upload: Command = {
  summary: "Upload a JSON Lines or JSON array dataset; every row is checked, and a bad row refuses the file.",
  synopsis: "<file> [--format <format>] [--name <name>]",
  details: "The dataset's uri (store://datasets/<sha256>) is what --data takes. Uploading the same bytes again gives the same dataset.",
  flags: [FORMAT, ENCODING, NAME],
  argument: { name: "[file]", help: "The dataset file." },
  async run(ctx) {
    const [path] = ctx.args;
    if (path === undefined) throw new UsageError("a dataset file is required");
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) throw new UsageError(`${path} is not a readable file`);
    const progress = byteProgress(ctx, "upload", info.size);
    const metadata = {
      displayName: ctx.flags.get(NAME) ?? path.split(/[\\/]/).at(-1)!,
      format: ctx.flags.get(FORMAT),
      encoding: ctx.flags.get(ENCODING),
    };
    async function* messages(): AsyncGenerator<MessageInitShape<typeof UploadDatasetRequestSchema>> {
      yield { content: { case: "metadata", value: metadata } };
      for await (const chunk of createReadStream(path, { highWaterMark: CHUNK_BYTES }) as AsyncIterable<Buffer>) {
        yield { content: { case: "chunk", value: chunk } };
        progress(chunk.byteLength);
      }
    }
    const res = await ctx.clients().datasets.uploadDataset(messages()).finally(() => progress.end());
    if (ctx.json) return writeJson(ctx.stdout, UploadDatasetResponseSchema, res);
    ctx.stdout.write(describeDataset(res.dataset!));
  },
};

const PAGE_SIZE = int("page-size", "<n>", "Datasets per page, 0 to 1000 (default 0: the server's 50).");
const PAGE_TOKEN = text("page-token", "<token>", "Token of the next page, as printed by the previous page.");

const list: Command = {
  summary: "List datasets, newest first.",
  synopsis: "[--page-size <n>] [--page-token <token>]",
  flags: [PAGE_SIZE, PAGE_TOKEN],
  async run(ctx) {
    const res = await ctx.clients().datasets.listDatasets({ pageSize: ctx.flags.get(PAGE_SIZE) ?? 0, pageToken: ctx.flags.get(PAGE_TOKEN) ?? "" });
    if (ctx.json) return writeJson(ctx.stdout, ListDatasetsResponseSchema, res);
    const rows = res.datasets.map((d) => [
      d.uri,
      d.displayName,
      formatName(d.format),
      String(d.rowCount),
      String(d.sizeBytes),
      d.createTime ? timestampDate(d.createTime).toISOString() : "",
    ]);
    ctx.stdout.write(rows.length ? table([["URI", "NAME", "FORMAT", "ROWS", "BYTES", "CREATED"], ...rows]) : "no datasets\n");
    ctx.stdout.write(nextPage("datasets list", res.nextPageToken, { "page-size": ctx.flags.get(PAGE_SIZE) }));
  },
};

const URI = { name: "[uri]", help: "The dataset, store://datasets/<sha256>, as upload prints it." };

function datasetUri(ctx: Context): string {
  const [uri] = ctx.args;
  if (uri === undefined) throw new UsageError("a dataset uri is required");
  return uri;
}

const get: Command = {
  summary: "Show a dataset: name, format, rows, size, creation time.",
  synopsis: "<uri>",
  flags: [],
  argument: URI,
  async run(ctx) {
    const res = await ctx.clients().datasets.getDataset({ uri: datasetUri(ctx) });
    if (ctx.json) return writeJson(ctx.stdout, GetDatasetResponseSchema, res);
    ctx.stdout.write(describeDataset(res.dataset!));
  },
};

const OUT = text("out", "<file>", "Where to write the dataset (required); written whole or not at all.");

const download: Command = {
  summary: "Download a dataset's bytes, exactly as uploaded.",
  synopsis: "<uri> --out <file>",
  details: "--json prints the dataset's description once the file is written.",
  flags: [OUT],
  argument: URI,
  async run(ctx) {
    const uri = datasetUri(ctx);
    const out = ctx.flags.required(OUT);
    const got = await ctx.clients().datasets.getDataset({ uri });
    const dataset = got.dataset!;
    const progress = byteProgress(ctx, "download", Number(dataset.sizeBytes));
    // Beside the target, so the rename that publishes it stays on one file system.
    const part = `${out}.part`;
    const interruptible = removedOnInterrupt(part);
    try {
      const chunks = async function* () {
        for await (const { chunk } of ctx.clients().datasets.downloadDataset({ uri })) {
          progress(chunk.byteLength);
          yield chunk;
        }
      };
      await pipeline(chunks, createWriteStream(part));
      await rename(part, out);
    } catch (err) {
      await rm(part, { force: true });
      throw err;
    } finally {
      interruptible();
      progress.end();
    }
    if (ctx.json) return writeJson(ctx.stdout, GetDatasetResponseSchema, got);
    ctx.stdout.write(`wrote ${out} (${dataset.sizeBytes} bytes, ${dataset.digest})\n`);
  },
};

const del: Command = {
  summary: "Delete a dataset; jobs that already read it are not affected.",
  synopsis: "<uri>",
  flags: [],
  argument: URI,
  async run(ctx) {
    const uri = datasetUri(ctx);
    const res = await ctx.clients().datasets.deleteDataset({ uri });
    if (ctx.json) return writeJson(ctx.stdout, DeleteDatasetResponseSchema, res);
    ctx.stdout.write(`deleted ${uri}\n`);
  },
};

export const DATASET_COMMANDS: { datasets: CommandGroup } = {
  datasets: {
    summary: "Upload, list, show, download and delete datasets.",
    subcommands: { upload, list, get, download, delete: del },
  },
};
