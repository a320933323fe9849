/** checkpoints import|list|get|export|delete: CheckpointService. */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, mkdir, open, readdir, rename, rm, rmdir, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type Checkpoint,
  CheckpointFileSchema,
  CheckpointType,
  ExportFormat,
  DeleteCheckpointResponseSchema,
  GetCheckpointResponseSchema,
  type ImportCheckpointRequestSchema,
  ImportCheckpointResponseSchema,
  ListCheckpointsResponseSchema,
  TensorDtype,
} from "../../../gen/vaccine/v1/checkpoints_pb.ts";
import { validateRelativePath } from "../../runtime/store/store.ts";
import { byteProgress } from "../byte-progress.ts";
import type { Command, CommandGroup, Context } from "../command.ts";
import { UsageError } from "../errors.ts";
import { choice, int, parseRef, ref, text } from "../flags.ts";
import { formatRef, nextPage, table, writeJson, type Ref } from "../output.ts";
import { removedOnInterrupt } from "../partial-output.ts";

/** Import messages carry at most this much; the contract allows 4 MiB. */
const CHUNK_BYTES = 1024 * 1024;

const TYPES: Record<string, CheckpointType> = {
  model: CheckpointType.BASE_MODEL,
  adapter: CheckpointType.ADAPTER,
  "training-state": CheckpointType.TRAINING_STATE,
  moderation: CheckpointType.MODERATION_MODEL,
};
const FORMATS: Record<string, ExportFormat> = { merged: ExportFormat.MERGED, peft: ExportFormat.PEFT_ADAPTER, stored: ExportFormat.AS_STORED };
const DTYPES: Record<string, TensorDtype> = { f32: TensorDtype.F32, f16: TensorDtype.F16, bf16: TensorDtype.BF16 };
const typeName = (t: CheckpointType) => Object.keys(TYPES).find((k) => TYPES[k] === t) ?? "unspecified";
const time = (c: Checkpoint) => (c.createTime ? timestampDate(c.createTime).toISOString() : "");

/** A checkpoint for people: one field a line, its ref first in the form every command takes. */
function describeCheckpoint(c: Checkpoint): string {
  const m = c.model;
  const a = c.adapter;
  const rows: [string, string][] = [
    ["ref", formatRef(c.ref)],
    ["type", typeName(c.type)],
    ["name", c.displayName],
    ["created", time(c)],
    ["job", c.jobId],
    [
      "model",
      m
        ? `${m.architecture}, ${m.numHiddenLayers} layers, hidden ${m.hiddenSize}, mlp ${m.intermediateSize}, ${m.numAttentionHeads} heads (${m.numKeyValueHeads} kv), ` +
          `vocab ${m.vocabSize}, ${m.maxPositionEmbeddings} positions${m.tieWordEmbeddings ? ", tied head" : ""}, ${m.parameterCount} parameters, ${m.dtype}`
        : "",
    ],
    ["adapter", a ? `rank ${a.rank}, alpha ${a.alpha}, ${a.targetModules.join(",")}, ${a.parameterCount} parameters` : ""],
    ["size", `${c.sizeBytes} bytes in ${c.files.length} files`],
  ];
  const lines = rows.filter(([, v]) => v !== "").map(([k, v]) => `${k.padEnd(8)}  ${v}`);
  c.lineage.forEach((r, i) => lines.push(`${(i === 0 ? "lineage" : "").padEnd(8)}  ${formatRef(r)}`));
  const files = table(c.files.map((f) => [f.path, String(f.sizeBytes), f.sha256])).trimEnd().split("\n");
  files.forEach((line, i) => lines.push(`${(i === 0 ? "files" : "").padEnd(8)}  ${line}`));
  return lines.join("\n") + "\n";
}

/** The positional checkpoint of get and export: uri@digest as printed, or builtin:<name>. */
function refArgument(ctx: Context): Ref {
  const [raw] = ctx.args;
  if (raw === undefined) throw new UsageError("a checkpoint (uri@digest) is required");
  return parseRef("checkpoint", raw, ctx.env);
}

/** The files of a folder to import, relative and sorted; dot entries (.git, .cache) are tooling, not the checkpoint. */
async function folderFiles(dir: string, rel = ""): Promise<{ path: string; size: number }[]> {
  const files: { path: string; size: number }[] = [];
  for (const name of (await readdir(join(dir, rel))).sort()) {
    if (name.startsWith(".")) continue;
    const path = rel ? `${rel}/${name}` : name;
    // stat, not lstat: Hugging Face cache snapshots are symlinks to their blobs.
    const info = await stat(join(dir, path));
    if (info.isDirectory()) files.push(...(await folderFiles(dir, path)));
    else if (info.isFile()) files.push({ path, size: info.size });
  }
  return files;
}

const ADAPTER_OF = ref("adapter-of", "<ref>", "Import a PEFT LoRA adapter over this checkpoint (default: a Hugging Face Llama model folder).");
const NAME = text("name", "<name>", "Name for people (default: the folder's name).");

const importCommand: Command = {
  summary: "Import a Hugging Face Llama folder or, with --adapter-of, a PEFT LoRA adapter; the server checks it completely before storing it.",
  synopsis: "<dir> [--adapter-of <ref>] [--name <name>]",
  details: "Files and folders whose names start with \".\" are not sent. Importing the same files under the same name again gives the same checkpoint.",
  flags: [ADAPTER_OF, NAME],
  argument: { name: "[dir]", help: "The checkpoint folder." },
  async run(ctx) {
    const [dir] = ctx.args;
    if (dir === undefined) throw new UsageError("a checkpoint folder is required");
    if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new UsageError(`${dir} is not a readable folder`);
    const files = await folderFiles(dir);
    if (files.length === 0) throw new UsageError(`${dir} holds no files`);
    const base = ctx.flags.get(ADAPTER_OF);
    const metadata = {
      type: base ? CheckpointType.ADAPTER : CheckpointType.BASE_MODEL,
      base,
      displayName: ctx.flags.get(NAME) ?? basename(resolve(dir)),
    };
    const progress = byteProgress(ctx, "import", files.reduce((n, f) => n + f.size, 0));
    async function* messages(): AsyncGenerator<MessageInitShape<typeof ImportCheckpointRequestSchema>> {
      yield { content: { case: "metadata", value: metadata } };
      for (const { path, size } of files) {
        if (size === 0) yield { content: { case: "chunk", value: { path, data: new Uint8Array(0) } } };
        for await (const data of createReadStream(join(dir!, ...path.split("/")), { highWaterMark: CHUNK_BYTES }) as AsyncIterable<Buffer>) {
          yield { content: { case: "chunk", value: { path, data } } };
          progress(data.byteLength);
        }
      }
    }
    const res = await ctx.clients().checkpoints.importCheckpoint(messages()).finally(() => progress.end());
    if (ctx.json) return writeJson(ctx.stdout, ImportCheckpointResponseSchema, res);
    ctx.stdout.write(describeCheckpoint(res.checkpoint!));
  },
};

const TYPE = choice("type", "<type>", "Only checkpoints of this type: model, adapter, training-state or moderation.", TYPES);
const PAGE_SIZE = int("page-size", "<n>", "Checkpoints per page, 0 to 1000 (default 0: the server's 50).");
const PAGE_TOKEN = text("page-token", "<token>", "Token of the next page, as printed by the previous page.");

const list: Command = {
  summary: "List checkpoints, newest first.",
  synopsis: "[--type <type>] [--page-size <n>] [--page-token <token>]",
  flags: [TYPE, PAGE_SIZE, PAGE_TOKEN],
  async run(ctx) {
    const f = ctx.flags;
    const res = await ctx.clients().checkpoints.listCheckpoints({ type: f.get(TYPE), pageSize: f.get(PAGE_SIZE) ?? 0, pageToken: f.get(PAGE_TOKEN) ?? "" });
    if (ctx.json) return writeJson(ctx.stdout, ListCheckpointsResponseSchema, res);
    const rows = res.checkpoints.map((c) => [typeName(c.type), c.displayName, String(c.sizeBytes), time(c), formatRef(c.ref)]);
    ctx.stdout.write(rows.length ? table([["TYPE", "NAME", "BYTES", "CREATED", "REF"], ...rows]) : "no checkpoints\n");
    const type = Object.keys(TYPES).find((name) => TYPES[name] === f.get(TYPE));
    ctx.stdout.write(nextPage("checkpoints list", res.nextPageToken, { type, "page-size": f.get(PAGE_SIZE) }));
  },
};

const CHECKPOINT_ARGUMENT = { name: "[checkpoint]", help: "The checkpoint, uri@digest as commands print it, or builtin:<name>." };

const get: Command = {
  summary: "Show a checkpoint: type, model, adapter, files with sha256, lineage, the job that made it.",
  synopsis: "<checkpoint>",
  flags: [],
  argument: CHECKPOINT_ARGUMENT,
  async run(ctx) {
    const res = await ctx.clients().checkpoints.getCheckpoint({ checkpoint: refArgument(ctx) });
    if (ctx.json) return writeJson(ctx.stdout, GetCheckpointResponseSchema, res);
    ctx.stdout.write(describeCheckpoint(res.checkpoint!));
  },
};

const del: Command = {
  summary: "Delete a checkpoint (with tenancy: give up your tenant's ownership); refused while other checkpoints build on it.",
  synopsis: "<checkpoint>",
  flags: [],
  argument: CHECKPOINT_ARGUMENT,
  async run(ctx) {
    const checkpoint = refArgument(ctx);
    const res = await ctx.clients().checkpoints.deleteCheckpoint({ checkpoint });
    if (ctx.json) return writeJson(ctx.stdout, DeleteCheckpointResponseSchema, res);
    ctx.stdout.write(`deleted ${formatRef(checkpoint)}\n`);
  },
};

const FORMAT = choice("format", "<format>", "merged (one Hugging Face folder, adapters merged in), peft (the adapter as a PEFT folder) or stored (the files as stored) (required).", FORMATS);
const OUT = text("out", "<dir>", "Folder to write, new or empty (required); it appears only once every file is written and checked.");
const DTYPE = choice("dtype", "<dtype>", "Weights as f32, f16 or bf16, rounded to nearest even (default f32; not with --format stored).", DTYPES);

/** One exported file being written: its bytes arrive in order and must hash to the sha256 on the last chunk. */
interface Incoming {
  path: string;
  handle: FileHandle;
  hash: ReturnType<typeof createHash>;
  written: bigint;
  progress: ReturnType<typeof byteProgress>;
}

/** An export stream that breaks its own rules: reported like a failed call (exit 1), nothing kept. */
function broken(message: string): ConnectError {
  return new ConnectError(message, Code.DataLoss);
}

const exportCommand: Command = {
  summary: "Export a checkpoint into a folder: merged into one Hugging Face model, as a PEFT adapter, or as stored.",
  synopsis: "<checkpoint> --format merged|peft|stored --out <dir> [--dtype f32|f16|bf16]",
  details: "--json prints each written file (path, size, sha256) as a proto JSON line.",
  flags: [FORMAT, OUT, DTYPE],
  argument: CHECKPOINT_ARGUMENT,
  async run(ctx) {
    const checkpoint = refArgument(ctx);
    const format = ctx.flags.required(FORMAT);
    const out = ctx.flags.required(OUT);
    const existing = await readdir(out).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw new UsageError(`--out ${out} is not a folder`);
    });
    if (existing && existing.length > 0) throw new UsageError(`--out ${out} exists and is not empty`);
    // Beside the target, so the rename that publishes it stays on one file system.
    const part = `${out}.part`;
    await rm(part, { recursive: true, force: true });
    await mkdir(part, { recursive: true });
    const written: { path: string; sizeBytes: bigint; sha256: string }[] = [];
    let current: Incoming | undefined;
    const interruptible = removedOnInterrupt(part);
    try {
      for await (const m of ctx.clients().checkpoints.exportCheckpoint({ checkpoint, format, dtype: ctx.flags.get(DTYPE) })) {
        if (current?.path !== m.path) {
          if (current) throw broken(`the server moved on from ${current.path} before its last chunk`);
          // The server names the paths: never let one leave the folder.
          const segments = (() => {
            try {
              return validateRelativePath(m.path);
            } catch {
              throw broken(`the server sent the path ${JSON.stringify(m.path)}, which would leave the folder`);
            }
          })();
          const target = join(part, ...segments);
          await mkdir(dirname(target), { recursive: true });
          current = { path: m.path, handle: await open(target, "wx"), hash: createHash("sha256"), written: 0n, progress: byteProgress(ctx, m.path, Number(m.fileSizeBytes)) };
        }
        if (m.offset !== current.written) throw broken(`${m.path}: chunk at offset ${m.offset}, expected ${current.written}`);
        await current.handle.write(m.data);
        current.hash.update(m.data);
        current.written += BigInt(m.data.byteLength);
        current.progress(m.data.byteLength);
        if (m.sha256) {
          const sha256 = current.hash.digest("hex");
          await current.handle.close();
          current.progress.end();
          if (sha256 !== m.sha256 || current.written !== m.fileSizeBytes) {
            throw broken(`${m.path}: received ${current.written} bytes with sha256 ${sha256}, the server sent ${m.fileSizeBytes} bytes with ${m.sha256}`);
          }
          written.push({ path: m.path, sizeBytes: current.written, sha256 });
          current = undefined;
        }
      }
      if (current) throw broken(`the export ended in the middle of ${current.path}`);
      if (existing) await rmdir(out);
      await rename(part, out);
    } catch (err) {
      await current?.handle.close().catch(() => undefined);
      current?.progress.end();
      await rm(part, { recursive: true, force: true });
      throw err;
    } finally {
      interruptible();
    }
    if (ctx.json) {
      for (const file of written) writeJson(ctx.stdout, CheckpointFileSchema, create(CheckpointFileSchema, file));
      return;
    }
    ctx.stdout.write(table([["PATH", "BYTES", "SHA256"], ...written.map((f) => [f.path, String(f.sizeBytes), f.sha256])]));
    ctx.stdout.write(`wrote ${out} (${written.length} files, ${written.reduce((n, f) => n + f.sizeBytes, 0n)} bytes)\n`);
  },
};

export const CHECKPOINT_COMMANDS: { checkpoints: CommandGroup } = {
  checkpoints: {
    summary: "Import Hugging Face models and PEFT adapters, list and show checkpoints, export and delete them.",
    subcommands: { import: importCommand, list, get, export: exportCommand, delete: del },
  },
};
