/**
 * CheckpointService over a real server (port 0): the fixtures of tests/fixtures/ imported as
 * a client would send them, Embed on them against expected.json, refusals (format, paths,
 * limits, bases), a cancelled import, exports and their round trips, Get and List, and an
 * imported model trained on by Align and FineTune.
 */
import { createHash } from "node:crypto";
import http2 from "node:http2";
import { statSync } from "node:fs";
import { cp, mkdtemp, readdir, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs";
import { Code, createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import {
  type Checkpoint,
  CheckpointService,
  CheckpointType,
  ExportCheckpointRequestSchema,
  type ExportCheckpointResponse,
  ExportFormat,
  type ImportCheckpointRequest,
  TensorDtype,
} from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { EmbedService, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import { alignService } from "../../services/align/service.ts";
import { checkpointService } from "../../services/checkpoints/service.ts";
import { embedService } from "../../services/embed/service.ts";
import { fineTuneService } from "../../services/finetune/service.ts";
import { startServer, type RunningServer } from "../../services/platform/server.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { f32BitsToBf16Bits, f32BitsToF16Bits, parseSafetensors, readSafetensorsHeader } from "../../services/runtime/checkpoint/safetensors.ts";
import { loadCheckpoint } from "../../services/runtime/pipeline/load.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { chunk, filesOf, folderMessages, meta, type Meta } from "../helpers/import-folder.ts";
import { testDeps } from "../helpers/server.ts";
import { compareScaled, maxAbsDiff } from "../helpers/tolerance.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));
const expected = JSON.parse(await readFile(join(FIXTURES, "expected.json"), "utf8"));
const TEXTS: { name: string; text: string }[] = expected.sequences.filter((s: { text: string | null }) => s.text !== null);

let server: RunningServer;
let deps: Awaited<ReturnType<typeof testDeps>>["deps"];
let cleanupRoot: string;
let workDir: string;
let checkpoints: ReturnType<typeof createClient<typeof CheckpointService>>;
let embed: ReturnType<typeof createClient<typeof EmbedService>>;
let align: ReturnType<typeof createClient<typeof AlignService>>;
let fineTune: ReturnType<typeof createClient<typeof FineTuneService>>;
const scratch: string[] = [];

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  const made = await testDeps();
  deps = made.deps;
  cleanupRoot = made.root;
  workDir = await mkdtemp(join(tmpdir(), "vaccine-ckpt-work-"));
  server = await startServer({
    services: [checkpointService(deps, { workDir }), embedService(deps), alignService(deps, deps.executor!), fineTuneService(deps, deps.executor!)],
    host: "127.0.0.1",
    port: 0,
    shutdownTimeoutMs: 5000,
  });
  server.onShutdown(() => deps.executor!.shutdown());
  const transport = createGrpcTransport({ baseUrl: server.url });
  checkpoints = createClient(CheckpointService, transport);
  embed = createClient(EmbedService, transport);
  align = createClient(AlignService, transport);
  fineTune = createClient(FineTuneService, transport);
});
afterAll(async () => {
  await server?.shutdown();
  for (const dir of [cleanupRoot, workDir, ...scratch]) await rm(dir, { recursive: true, force: true });
});

async function importDir(dir: string, m: Meta): Promise<Checkpoint> {
  return (await checkpoints.importCheckpoint(folderMessages(dir, m))).checkpoint!;
}

const refOf = (c: Checkpoint): CheckpointRef => ({ uri: c.ref!.uri, digest: c.ref!.digest });

/** A private copy of a fixture. */
async function copy(fixture: string): Promise<string> {
  const parent = await mkdtemp(join(tmpdir(), "vaccine-ckpt-src-"));
  scratch.push(parent);
  await cp(join(FIXTURES, fixture), join(parent, fixture), { recursive: true });
  return join(parent, fixture);
}

/** An export's files reassembled, with the stream's own checks: contiguous offsets, sizes, sha256 on the last chunk only. */
async function exported(stream: AsyncIterable<ExportCheckpointResponse>): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer[]>();
  const done = new Set<string>();
  for await (const m of stream) {
    expect(done.has(m.path), `${m.path} continued after its last chunk`).toBe(false);
    const parts = files.get(m.path) ?? [];
    expect(m.offset).toBe(BigInt(parts.reduce((n, p) => n + p.byteLength, 0)));
    parts.push(Buffer.from(m.data));
    files.set(m.path, parts);
    const size = parts.reduce((n, p) => n + p.byteLength, 0);
    if (m.sha256) {
      done.add(m.path);
      expect(BigInt(size)).toBe(m.fileSizeBytes);
      expect(m.sha256).toBe(createHash("sha256").update(Buffer.concat(parts)).digest("hex"));
    }
  }
  expect([...files.keys()].every((p) => done.has(p))).toBe(true);
  return new Map([...files].map(([path, parts]) => [path, Buffer.concat(parts)]));
}

async function writeFolder(files: Map<string, Buffer>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "vaccine-ckpt-export-"));
  scratch.push(dir);
  for (const [path, data] of files) await writeFile(join(dir, path), data);
  return dir;
}

/** Embed's last-token attention outputs and final hidden state against one case of expected.json. */
async function expectEmbedMatches(ref: CheckpointRef, caseName: string): Promise<void> {
  const res = await embed.embed({ checkpoint: ref, texts: TEXTS.map((t) => t.text), includeFinalHidden: true, pooling: Pooling.LAST_TOKEN });
  const results = expected.cases[caseName].results;
  TEXTS.forEach((seq, i) => {
    const want = results[seq.name];
    for (const { layer, vectors } of res.embeddings[i].layers) {
      const ref = layer === -1 ? want.final_norm_hidden[want.final_norm_hidden.length - 1] : want.attn_out_last[layer];
      const c = compareScaled(vectors!.values, ref, 1e-4);
      expect(c.failures, `${caseName}/${seq.name} layer ${layer}: ${c.scaledMaxDiff}`).toBe(0);
    }
    expect(res.embeddings[i].layers.map((l) => l.layer)).toEqual([...want.attn_out_last.keys(), -1]);
  });
}

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const storeRefs = async () => (await deps.store.list()).map((r) => r.uri).sort();
const workEntries = async () => readdir(workDir);

let f32: Checkpoint;
let bf16: Checkpoint;
let adapter: Checkpoint;

describe("ImportCheckpoint: the fixtures", () => {
  it("imports the F32 folder: model summary, files with sizes and sha256, lineage, name, create time", async () => {
    const before = Date.now();
    f32 = await importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "llama f32" });
    expect(f32.type).toBe(CheckpointType.BASE_MODEL);
    expect(f32.displayName).toBe("llama f32");
    expect(f32.model).toMatchObject({
      architecture: "LlamaForCausalLM", vocabSize: 512, hiddenSize: 64, intermediateSize: 160, numHiddenLayers: 2,
      numAttentionHeads: 4, numKeyValueHeads: 2, maxPositionEmbeddings: 128, tieWordEmbeddings: false,
      parameterCount: BigInt(expected.folders["llama-f32-gqa"].parameter_count), dtype: "F32",
    });
    expect(f32.adapter).toBeUndefined();
    const files = await filesOf(join(FIXTURES, "llama-f32-gqa"));
    expect(f32.files.map((f) => f.path)).toEqual(files);
    for (const f of f32.files) {
      const data = await readFile(join(FIXTURES, "llama-f32-gqa", f.path));
      expect(f.sizeBytes).toBe(BigInt(data.byteLength));
      expect(f.sha256).toBe(sha256(data));
    }
    expect(f32.sizeBytes).toBe(f32.files.reduce((n, f) => n + f.sizeBytes, 0n));
    expect(f32.lineage.map((r) => r.uri)).toEqual([f32.ref!.uri]);
    expect(f32.jobId).toBe("");
    const created = timestampDate(f32.createTime!).getTime();
    expect(created).toBeGreaterThanOrEqual(before - 1000);
    expect(created).toBeLessThanOrEqual(Date.now());
    expect(await workEntries()).toEqual([]);
  });

  it("imports the sharded, tied BF16 folder", async () => {
    bf16 = await importDir(join(FIXTURES, "llama-bf16-sharded-tied"), { type: CheckpointType.BASE_MODEL, displayName: "llama bf16" });
    expect(bf16.model).toMatchObject({ numHiddenLayers: 3, tieWordEmbeddings: true, dtype: "BF16", parameterCount: BigInt(expected.folders["llama-bf16-sharded-tied"].parameter_count) });
  });

  it("imports the adapter over the imported F32 base: adapter summary, lineage from the root", async () => {
    adapter = await importDir(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER, base: refOf(f32), displayName: "adapter" });
    expect(adapter.type).toBe(CheckpointType.ADAPTER);
    expect(adapter.adapter).toMatchObject({ rank: 4, alpha: 8, parameterCount: BigInt(expected.folders["adapter-f32-gqa"].parameter_count) });
    expect(adapter.adapter!.targetModules).toEqual(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    expect(adapter.model).toMatchObject({ numHiddenLayers: 2, dtype: "F32" });
    expect(adapter.lineage.map((r) => r.uri)).toEqual([f32.ref!.uri, adapter.ref!.uri]);
  });

  it("Embed on the imported checkpoints matches expected.json", async () => {
    await expectEmbedMatches(refOf(f32), "base_f32");
    await expectEmbedMatches(refOf(bf16), "base_bf16_sharded_tied");
    await expectEmbedMatches(refOf(adapter), "adapter_unmerged_f32");
  });

  it("is idempotent: the same files under the same name are the same checkpoint", async () => {
    const again = await importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "llama f32" });
    expect(again.ref).toEqual(f32.ref);
    expect(again.createTime).toEqual(f32.createTime);
  });
});

describe("ImportCheckpoint: refusals", () => {
  async function refused(dir: string, m: Meta) {
    const before = await storeRefs();
    const e = await rpcFailure(() => importDir(dir, m));
    expect(await storeRefs()).toEqual(before);
    expect(await workEntries()).toEqual([]);
    return e;
  }
  async function formatInvalid(dir: string, m: Meta, file: string, message: RegExp) {
    const e = await refused(dir, m);
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("CHECKPOINT_FORMAT_INVALID");
    expect(e.info?.metadata.file).toBe(file);
    expect(e.badRequest?.fieldViolations).toHaveLength(1);
    expect(e.badRequest!.fieldViolations[0].field).toBe(file);
    expect(e.badRequest!.fieldViolations[0].description).toMatch(message);
    expect(e.message).not.toContain(tmpdir());
    return e;
  }
  const base = { type: CheckpointType.BASE_MODEL };

  it("a tensor's shape changed", async () => {
    const dir = await copy("llama-f32-gqa");
    const path = join(dir, "model.safetensors");
    const bytes = await readFile(path);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = bytes.subarray(8, 8 + headerLength).toString("utf8");
    // Same byte count, other shape: only the header changes.
    const changed = header.replace('"model.layers.0.self_attn.q_proj.weight":{"dtype":"F32","shape":[64,64]', '"model.layers.0.self_attn.q_proj.weight":{"dtype":"F32","shape":[32,128]');
    expect(changed).not.toBe(header);
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(changed)));
    await writeFile(path, Buffer.concat([prefix, Buffer.from(changed), bytes.subarray(8 + headerLength)]));
    await formatInvalid(dir, base, "model.safetensors", /tensor "model.layers.0.self_attn.q_proj.weight" has shape \[32, 128\], config.json implies \[64, 64\]/);
  });

  it("a shard named in the index but not sent", async () => {
    const dir = await copy("llama-bf16-sharded-tied");
    await unlink(join(dir, "model-00002-of-00002.safetensors"));
    await formatInvalid(dir, base, "model-00002-of-00002.safetensors", /missing model-00002-of-00002.safetensors \(named in model.safetensors.index.json\)/);
  });

  it("a config that disagrees with the tensors", async () => {
    const dir = await copy("llama-f32-gqa");
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 3 }));
    await formatInvalid(dir, base, "model.safetensors", /missing tensor "model.layers.2.input_layernorm.weight" \[64\]/);
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 8 }));
    await formatInvalid(dir, base, "config.json", /describes 410688 weights \(821376 bytes even in 16 bits\), the weight files hold 607488 bytes/);
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, intermediate_size: 128 }));
    await formatInvalid(dir, base, "model.safetensors", /config.json implies \[128, 64\]/);
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 1e9 }));
    await formatInvalid(dir, base, "config.json", /num_hidden_layers must be an integer in \[1, 1024\]/);
  });

  it("a missing tokenizer, or one without an eos token", async () => {
    const dir = await copy("llama-f32-gqa");
    await unlink(join(dir, "tokenizer.json"));
    await formatInvalid(dir, base, "tokenizer.json", /^missing tokenizer.json$/);
  });

  it("an adapter folder sent as a model, a model sent as an adapter, an adapter that does not fit its base", async () => {
    await formatInvalid(join(FIXTURES, "adapter-f32-gqa"), base, "config.json", /^missing config.json: the folder holds a PEFT adapter \(adapter_config.json\); import it as an adapter over its base$/);
    await formatInvalid(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.ADAPTER, base: refOf(f32) }, "adapter_config.json", /^missing adapter_config.json$/);
    // Over the 3-layer base, layer 2 has no LoRA weights.
    await formatInvalid(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER, base: refOf(bf16) }, "adapter_model.safetensors", /missing tensor "base_model.model.model.layers.2/);
  });

  it("an adapter with an unknown target module", async () => {
    const dir = await copy("adapter-f32-gqa");
    const config = JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8"));
    await writeFile(join(dir, "adapter_config.json"), JSON.stringify({ ...config, target_modules: [...config.target_modules, "embed_tokens"] }));
    await formatInvalid(dir, { type: CheckpointType.ADAPTER, base: refOf(f32) }, "adapter_config.json", /unknown modules \["embed_tokens"\]/);
  });

  it("paths that leave the folder or are not normalised, naming the path", async () => {
    for (const path of ["../evil", "/etc/passwd", "a\\b", "a\u0000b", "a//b", "", "./config.json", "a/../b", "x/"]) {
      const before = await storeRefs();
      const failure = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
        yield meta(base);
        yield chunk("config.json", Buffer.from("{}"));
        yield chunk(path, Buffer.from("x"));
      })()));
      expect(failure.code, JSON.stringify(path)).toBe(Code.InvalidArgument);
      expect(failure.badRequest?.fieldViolations[0].field).toBe("chunk.path");
      expect(failure.badRequest?.fieldViolations[0].description.startsWith(JSON.stringify(path))).toBe(true);
      expect(await storeRefs()).toEqual(before);
      expect(await workEntries()).toEqual([]);
    }
  });

  it("a file that continues after another started, and a file clashing with a folder", async () => {
    const interleaved = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
      yield meta(base);
      yield chunk("config.json", Buffer.from("{"));
      yield chunk("tokenizer.json", Buffer.from("{}"));
      yield chunk("config.json", Buffer.from("}"));
    })()));
    expect(interleaved.badRequest?.fieldViolations[0].description).toBe('"config.json": continues after another file started; send each file\'s chunks together');
    const clash = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
      yield meta(base);
      yield chunk("a", Buffer.from("1"));
      yield chunk("a/b", Buffer.from("2"));
    })()));
    expect(clash.badRequest?.fieldViolations[0].description).toBe('"a/b": a is already a file of this checkpoint');
    expect(await workEntries()).toEqual([]);
  });

  it("bad metadata: missing, repeated, unknown type, an adapter without a usable base", async () => {
    const noMeta = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
      yield chunk("config.json", Buffer.from("{}"));
    })()));
    expect(noMeta.badRequest?.fieldViolations[0]).toMatchObject({ field: "metadata", description: "must be the first message" });
    const twice = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
      yield meta(base);
      yield meta(base);
    })()));
    expect(twice.badRequest?.fieldViolations[0].field).toBe("metadata");
    const untyped = await rpcFailure(() => importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.TRAINING_STATE }));
    expect(untyped.badRequest?.fieldViolations[0].field).toBe("metadata.type");
    const noBase = await rpcFailure(() => importDir(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER }));
    expect(noBase.badRequest?.fieldViolations[0].field).toBe("metadata.base");
    const unknownBase = await rpcFailure(() => importDir(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER, base: { uri: `store://checkpoints/${"0".repeat(64)}`, digest: `sha256:${"0".repeat(64)}` } }));
    expect(unknownBase.code).toBe(Code.NotFound);
    expect(unknownBase.info?.metadata.field).toBe("metadata.base");
    const moderation = await rpcFailure(() => importDir(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER, base: deps.builtins.moderation }));
    expect(moderation.code).toBe(Code.FailedPrecondition);
    expect(moderation.info?.reason).toBe("CHECKPOINT_KIND_INVALID");
    const baseOnModel = await rpcFailure(() => importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, base: refOf(f32) }));
    expect(baseOnModel.badRequest?.fieldViolations[0].field).toBe("metadata.base");
    // The shipped checkpoints' names: a client looking for builtin/base must not find an import.
    const posing = await rpcFailure(() => importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "builtin/base" }));
    expect(posing.badRequest?.fieldViolations).toEqual([expect.objectContaining({ field: "metadata.display_name", description: 'begins "builtin/", which names the shipped checkpoints' })]);
  });

  it("size limits while streaming: per file and per checkpoint, naming the limit, nothing kept", async () => {
    const saved = deps.uploads;
    try {
      deps.uploads = { ...saved, maxFileBytes: 100_000 };
      const perFile = await refused(join(FIXTURES, "llama-f32-gqa"), base);
      expect(perFile.code).toBe(Code.ResourceExhausted);
      expect(perFile.info).toMatchObject({ reason: "CHECKPOINT_TOO_LARGE", metadata: { limit: "max_file_bytes", limit_bytes: "100000", file: "model.safetensors" } });
      deps.uploads = { ...saved, maxCheckpointBytes: 300_000 };
      const total = await refused(join(FIXTURES, "llama-bf16-sharded-tied"), base);
      expect(total.code).toBe(Code.ResourceExhausted);
      expect(total.info?.metadata).toMatchObject({ limit: "max_checkpoint_bytes", limit_bytes: "300000" });
    } finally {
      deps.uploads = saved;
    }
  });

  it("a disk error while writing the upload: INTERNAL IMPORT_WRITE_FAILED with the error's code and no server path, nothing kept", async () => {
    const before = await storeRefs();
    const failure = await rpcFailure(() => checkpoints.importCheckpoint((async function* () {
      yield meta(base);
      yield chunk("config.json", Buffer.from("{}"));
      // The import's temp folder becomes a file: the next file cannot be created in it.
      let entries: string[] = [];
      while ((entries = await workEntries()).length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      const folder = join(workDir, entries[0]);
      await rm(folder, { recursive: true, force: true });
      await writeFile(folder, "");
      yield chunk("tokenizer.json", Buffer.from("{}"));
    })()));
    expect(failure.code).toBe(Code.Internal);
    expect(failure.info?.reason).toBe("IMPORT_WRITE_FAILED");
    expect(failure.message).toMatch(/could not write the upload \((EEXIST|ENOTDIR|ENOENT)\)$/);
    expect(failure.message).not.toContain(workDir);
    expect(await workEntries()).toEqual([]);
    expect(await storeRefs()).toEqual(before);
  });

  /** Sends `messages`, cancels once `ready` holds, and checks that nothing was stored or left behind. */
  async function cancelledImport(messages: ImportCheckpointRequest[], ready: () => Promise<boolean>) {
    const before = await storeRefs();
    const abort = new AbortController();
    const call = checkpoints.importCheckpoint((async function* () {
      yield* messages;
      while (!(await ready())) await new Promise((resolve) => setTimeout(resolve, 5));
      abort.abort();
      await new Promise(() => {});
    })(), { signal: abort.signal });
    await expect(call).rejects.toMatchObject({ code: Code.Canceled });
    // The server learns of the cancel asynchronously: its temp folder goes once it has.
    for (let i = 0; i < 100 && (await workEntries()).length > 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await workEntries()).toEqual([]);
    expect(await storeRefs()).toEqual(before);
  }

  it("a client that cancels half way leaves the store unchanged and no temp files", async () => {
    const all: ImportCheckpointRequest[] = [];
    for await (const m of folderMessages(join(FIXTURES, "llama-bf16-sharded-tied"), base, 8 * 1024)) all.push(m);
    // Cancel only once the server is writing this import to its temp folder.
    await cancelledImport(all.slice(0, Math.floor(all.length / 2)), async () => (await workEntries()).length > 0);
  });

  it("a client that cancels after its whole folder, before the server stores it, leaves the store unchanged", async () => {
    // A Node client's cancel ends the request stream, then resets it: the folder arrives whole.
    // A name of its own: the same files under the name of an earlier import are stored already.
    const all: ImportCheckpointRequest[] = [];
    for await (const m of folderMessages(join(FIXTURES, "llama-f32-gqa"), { ...base, displayName: "cancelled whole" })) all.push(m);
    const bytes = all.reduce((n, m) => n + (m.content.case === "chunk" ? m.content.value.data.byteLength : 0), 0);
    const written = async () => {
      const [folder] = await workEntries();
      return folder ? (await readdir(join(workDir, folder), { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).reduce((n, e) => n + statSync(join(e.parentPath, e.name)).size, 0) : 0;
    };
    await cancelledImport(all, async () => (await written()) >= bytes);
  });
});

describe("ExportCheckpoint", () => {
  const exportOf = (c: Checkpoint, format: ExportFormat, dtype = TensorDtype.UNSPECIFIED) =>
    exported(checkpoints.exportCheckpoint({ checkpoint: c.ref, format, dtype }));

  it("removes its temp folder when the client goes away mid-stream", async () => {
    for (let i = 0; i < 5; i++) {
      const cancel = new AbortController();
      const stream = checkpoints.exportCheckpoint({ checkpoint: f32.ref, format: ExportFormat.MERGED, dtype: TensorDtype.F32 }, { signal: cancel.signal });
      const reading = stream[Symbol.asyncIterator]();
      await reading.next();
      expect(await workEntries()).toHaveLength(1);
      cancel.abort();
      await reading.next().catch(() => undefined);
      for (const end = Date.now() + 5000; (await workEntries()).length > 0 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
      expect(await workEntries(), `export ${i}`).toEqual([]);
    }
  });

  it("PEFT_ADAPTER, imported again over the same base, is the same checkpoint", async () => {
    const files = await exportOf(adapter, ExportFormat.PEFT_ADAPTER);
    expect([...files.keys()]).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
    for (const [path, data] of files) expect(sha256(data)).toBe(sha256(await readFile(join(FIXTURES, "adapter-f32-gqa", path))));
    const again = await importDir(await writeFolder(files), { type: CheckpointType.ADAPTER, base: refOf(f32), displayName: "adapter" });
    expect(again.ref).toEqual(adapter.ref);
    expect(await workEntries()).toEqual([]);
  });

  it("MERGED F32 of a model without adapters gives back the imported tensors bit for bit", async () => {
    const files = await exportOf(f32, ExportFormat.MERGED, TensorDtype.F32);
    expect([...files.keys()]).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    const original = parseSafetensors(await readFile(join(FIXTURES, "llama-f32-gqa/model.safetensors")));
    const merged = parseSafetensors(files.get("model.safetensors")!);
    expect([...merged.tensors.keys()].sort()).toEqual([...original.tensors.keys()].sort());
    for (const [name, t] of original.tensors) {
      expect(merged.tensors.get(name)!.shape).toEqual(t.shape);
      expect(Buffer.from(merged.tensors.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), name).toBe(true);
    }
    expect(merged.metadata).toEqual({ format: "pt" });
    expect(JSON.parse(files.get("config.json")!.toString())).toEqual(JSON.parse(await readFile(join(FIXTURES, "llama-f32-gqa/config.json"), "utf8")));
    expect(files.get("tokenizer.json")!.equals(await readFile(join(FIXTURES, "llama-f32-gqa/tokenizer.json")))).toBe(true);
  });

  it("MERGED of base + adapter, imported as a model, gives the logits of base + adapter within 1e-5", async () => {
    const files = await exportOf(adapter, ExportFormat.MERGED);
    const merged = await importDir(await writeFolder(files), { type: CheckpointType.BASE_MODEL, displayName: "merged" });
    expect(merged.model?.parameterCount).toBe(f32.model?.parameterCount);
    await expectEmbedMatches(refOf(merged), "adapter_merged_f32");
    const a = await loadCheckpoint(deps.store, refOf(adapter));
    const m = await loadCheckpoint(deps.store, refOf(merged));
    try {
      for (const seq of expected.sequences) {
        const ids = tf.tensor2d([seq.input_ids], [1, seq.input_ids.length], "int32");
        const mask = tf.onesLike(ids);
        const want = a.model.forward(ids, mask, { lora: a.adapter }).logits;
        const got = m.model.forward(ids, mask).logits;
        expect(maxAbsDiff(got.arraySync(), want.arraySync()), seq.name).toBeLessThanOrEqual(1e-5);
        tf.dispose([ids, mask, want, got]);
      }
    } finally {
      a.dispose();
      m.dispose();
    }
  });

  it("MERGED of the tied BF16 model: one weight file, no lm_head, exact upcast", async () => {
    const files = await exportOf(bf16, ExportFormat.MERGED);
    const merged = parseSafetensors(files.get("model.safetensors")!);
    expect(merged.tensors.has("lm_head.weight")).toBe(false);
    expect(JSON.parse(files.get("config.json")!.toString())).toMatchObject({ tie_word_embeddings: true, torch_dtype: "float32" });
    const again = await importDir(await writeFolder(files), { type: CheckpointType.BASE_MODEL });
    await expectEmbedMatches(refOf(again), "base_bf16_sharded_tied");
  });

  it("F16 and BF16 exports: the dtype in the file and the config, values rounded to nearest even", async () => {
    const original = parseSafetensors(await readFile(join(FIXTURES, "llama-f32-gqa/model.safetensors")));
    for (const [dtype, name, torch, encode] of [
      [TensorDtype.F16, "F16", "float16", f32BitsToF16Bits],
      [TensorDtype.BF16, "BF16", "bfloat16", f32BitsToBf16Bits],
    ] as const) {
      const files = await exportOf(f32, ExportFormat.MERGED, dtype);
      expect(JSON.parse(files.get("config.json")!.toString()).torch_dtype).toBe(torch);
      const dir = await writeFolder(new Map([["model.safetensors", files.get("model.safetensors")!]]));
      const header = await readSafetensorsHeader(join(dir, "model.safetensors"));
      expect(new Set(header.entries.map((e) => e.dtype))).toEqual(new Set([name]));
      const data = files.get("model.safetensors")!.subarray(header.dataStart);
      for (const entry of header.entries) {
        const codes = new Uint16Array(data.buffer.slice(data.byteOffset + entry.begin, data.byteOffset + entry.end));
        const bits = new Uint32Array(original.tensors.get(entry.name)!.data.buffer);
        expect(Array.from(codes), entry.name).toEqual(Array.from(bits, encode));
      }
    }
  });

  it("sends export messages uncompressed to a client that accepts gzip, and takes a gzip-compressed import", async () => {
    // Raw HTTP/2, to see each message's compressed flag (clients decompress without telling).
    const session = http2.connect(server.url);
    try {
      const body = toBinary(ExportCheckpointRequestSchema, create(ExportCheckpointRequestSchema, { checkpoint: f32.ref, format: ExportFormat.AS_STORED }));
      const frame = Buffer.alloc(5 + body.byteLength);
      frame.writeUInt32BE(body.byteLength, 1);
      frame.set(body, 5);
      const stream = session.request({
        ":method": "POST", ":path": "/vaccine.v1.CheckpointService/ExportCheckpoint",
        "content-type": "application/grpc", te: "trailers", "grpc-accept-encoding": "gzip",
      });
      stream.end(frame);
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      const data = Buffer.concat(chunks);
      const flags: number[] = [];
      let payload = 0;
      for (let at = 0; at < data.byteLength; at += 5 + data.readUInt32BE(at + 1)) {
        flags.push(data[at]);
        payload += data.readUInt32BE(at + 1);
      }
      expect(flags).toHaveLength(f32.files.length);
      expect(new Set(flags)).toEqual(new Set([0]));
      expect(payload).toBeGreaterThan(Number(f32.sizeBytes));
    } finally {
      session.close();
    }
    const gzip = createClient(CheckpointService, createGrpcTransport({ baseUrl: server.url, sendCompression: compressionGzip, acceptCompression: [compressionGzip] }));
    const again = await gzip.importCheckpoint(folderMessages(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "llama f32" }));
    expect(again.checkpoint!.ref).toEqual(f32.ref);
  });

  it("AS_STORED: the stored files unchanged; bad requests are refused", async () => {
    const files = await exportOf(bf16, ExportFormat.AS_STORED);
    expect([...files.keys()]).toEqual(await filesOf(join(FIXTURES, "llama-bf16-sharded-tied")));
    for (const [path, data] of files) expect(data.equals(await readFile(join(FIXTURES, "llama-bf16-sharded-tied", path)))).toBe(true);

    const dtype = await rpcFailure(() => exportOf(bf16, ExportFormat.AS_STORED, TensorDtype.F16));
    expect(dtype.badRequest?.fieldViolations[0].field).toBe("dtype");
    const format = await rpcFailure(() => exportOf(bf16, ExportFormat.UNSPECIFIED));
    expect(format.badRequest?.fieldViolations[0].field).toBe("format");
    const peftOfModel = await rpcFailure(() => exportOf(f32, ExportFormat.PEFT_ADAPTER));
    expect(peftOfModel.code).toBe(Code.FailedPrecondition);
    const classifier = await rpcFailure(() => exported(checkpoints.exportCheckpoint({ checkpoint: deps.builtins.moderation, format: ExportFormat.MERGED })));
    expect(classifier.code).toBe(Code.FailedPrecondition);
    const missing = await rpcFailure(() => exported(checkpoints.exportCheckpoint({ checkpoint: { uri: `store://checkpoints/${"1".repeat(64)}`, digest: `sha256:${"1".repeat(64)}` }, format: ExportFormat.AS_STORED })));
    expect(missing.code).toBe(Code.NotFound);
    expect(await workEntries()).toEqual([]);
  });
});

describe("GetCheckpoint and ListCheckpoints", () => {
  it("gets what the import returned; an unknown one is NOT_FOUND", async () => {
    expect((await checkpoints.getCheckpoint({ checkpoint: adapter.ref })).checkpoint).toEqual(adapter);
    const e = await rpcFailure(() => checkpoints.getCheckpoint({ checkpoint: { uri: `store://checkpoints/${"2".repeat(64)}`, digest: `sha256:${"2".repeat(64)}` } }));
    expect(e.code).toBe(Code.NotFound);
  });

  it("refuses a ref whose digest is not the one its uri names, as a bad request, not as damage", async () => {
    const hex = adapter.ref!.uri.slice(-64);
    const wrong = `sha256:${hex.replace(/^./, (c) => (c === "0" ? "1" : "0"))}`;
    const e = await rpcFailure(() => checkpoints.getCheckpoint({ checkpoint: { uri: adapter.ref!.uri, digest: wrong } }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.badRequest?.fieldViolations).toEqual([expect.objectContaining({ field: "checkpoint.digest", description: `must be the digest its uri names, sha256:${hex}` })]);
    // The same through a call that reads the ref in the runtime (Embed's loader).
    const viaEmbed = await rpcFailure(() => embed.embed({ checkpoint: { uri: adapter.ref!.uri, digest: wrong }, texts: ["hi"] }));
    expect(viaEmbed.code).toBe(Code.InvalidArgument);
  });

  it("lists newest first, by type, a page at a time", async () => {
    const all = (await checkpoints.listCheckpoints({ pageSize: 1000 })).checkpoints;
    const times = all.map((c) => timestampDate(c.createTime!).getTime());
    expect([...times].sort((a, b) => b - a)).toEqual(times);
    expect(all.map((c) => c.ref!.uri)).toContain(f32.ref!.uri);
    // The built-in moderation classifier and the tiny base are there too.
    expect(new Set(all.map((c) => c.type))).toEqual(new Set([CheckpointType.BASE_MODEL, CheckpointType.ADAPTER, CheckpointType.MODERATION_MODEL]));

    const adapters = (await checkpoints.listCheckpoints({ type: CheckpointType.ADAPTER })).checkpoints;
    expect(adapters.length).toBeGreaterThan(0);
    expect(adapters.every((c) => c.type === CheckpointType.ADAPTER)).toBe(true);

    const paged: string[] = [];
    let token = "";
    do {
      const page = await checkpoints.listCheckpoints({ pageSize: 2, pageToken: token });
      expect(page.checkpoints.length).toBeLessThanOrEqual(2);
      paged.push(...page.checkpoints.map((c) => c.ref!.uri));
      token = page.nextPageToken;
    } while (token);
    expect(paged).toEqual(all.map((c) => c.ref!.uri));

    // A token that does not decode and one that is not base64url: one violation each.
    for (const pageToken of ["bm90LWEtdG9rZW4", "not a token"]) {
      const bad = await rpcFailure(() => checkpoints.listCheckpoints({ pageToken }));
      expect(bad.badRequest?.fieldViolations.map((f) => f.field)).toEqual(["page_token"]);
    }
  });
});

describe("imported checkpoints in training", () => {
  it("Align trains over an imported model and FineTune over an imported adapter; the results embed and export", async () => {
    const data = "store://datasets/ckpt-test.jsonl";
    await deps.store.putObject(data, Buffer.from(EXAMPLES.slice(0, 6).map((e) => JSON.stringify(e)).join("\n")));
    // The fixtures' byte-level tokenizer makes the Alpaca prompt about 110 tokens: a shorter
    // maximum leaves no response token to train on (NO_TRAINING_TOKENS).
    const training = { maxSteps: 2, batchSize: 2, learningRate: 0.01, maxSequenceLength: 160, checkpointEvery: 2 };
    const lora = { rank: 2, alpha: 4, dropout: 0 };
    const wait = async (get: () => Promise<{ state: JobState; result?: { uri: string; digest: string } }>) => {
      for (;;) {
        const job = await get();
        if (job.state === JobState.SUCCEEDED) return job.result!;
        expect([JobState.QUEUED, JobState.RUNNING]).toContain(job.state);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    // A maximum the prompts fill (in the imported model's own tokenizer): refused at Create instead of succeeding without training.
    const short = await rpcFailure(() => align.createAlignJob({ spec: { baseCheckpoint: f32.ref, dataset: { source: { case: "uri", value: data } }, method: { case: "sft", value: {} }, lora, training: { ...training, maxSequenceLength: 48 } } }));
    expect(short.code).toBe(Code.FailedPrecondition);
    expect(short.info?.reason).toBe("NO_TRAINING_TOKENS");

    const { job } = await align.createAlignJob({ spec: { baseCheckpoint: f32.ref, dataset: { source: { case: "uri", value: data } }, method: { case: "sft", value: {} }, lora, training } });
    const aligned = await wait(async () => (await align.getAlignJob({ jobId: job!.id })).job!);
    const { job: ft } = await fineTune.createFineTuneJob({ spec: { alignedCheckpoint: adapter.ref, dataset: { source: { case: "uri", value: data } }, lora, training } });
    const tuned = await wait(async () => (await fineTune.getFineTuneJob({ jobId: ft!.id })).job!);

    const described = (await checkpoints.getCheckpoint({ checkpoint: tuned })).checkpoint!;
    expect(described.jobId).toBe(ft!.id);
    expect(described.lineage.map((r) => r.uri)).toEqual([f32.ref!.uri, adapter.ref!.uri, tuned.uri]);
    expect((await checkpoints.getCheckpoint({ checkpoint: aligned })).checkpoint!.lineage[0].uri).toBe(f32.ref!.uri);
    const res = await embed.embed({ checkpoint: tuned, texts: ["the cat sat down"], pooling: Pooling.MEAN });
    expect(res.embeddings[0].layers).toHaveLength(2);

    // The fine-tuned model merged and exported embeds as the fine-tuned checkpoint does.
    const files = await exported(checkpoints.exportCheckpoint({ checkpoint: tuned, format: ExportFormat.MERGED }));
    const merged = await importDir(await writeFolder(files), { type: CheckpointType.BASE_MODEL });
    const texts = TEXTS.map((t) => t.text);
    const want = await embed.embed({ checkpoint: tuned, texts, includeFinalHidden: true, pooling: Pooling.LAST_TOKEN });
    const got = await embed.embed({ checkpoint: merged.ref, texts, includeFinalHidden: true, pooling: Pooling.LAST_TOKEN });
    got.embeddings.forEach((e, i) =>
      e.layers.forEach((l, k) => expect(maxAbsDiff(l.vectors!.values, want.embeddings[i].layers[k].vectors!.values)).toBeLessThanOrEqual(1e-4)),
    );
  }, 120_000);
});

describe("a damaged checkpoint in the store", () => {
  it("is left out of lists, which still show every other, and is DATA_LOSS on Get", async () => {
    const damaged = await importDir(await copy("llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "to be damaged" });
    const manifest = join(cleanupRoot, "store", "checkpoints", damaged.ref!.digest.replace("sha256:", ""), "manifest.json");
    await writeFile(manifest, (await readFile(manifest, "utf8")).replace("to be damaged", "to be damagee"));
    const listed = (await checkpoints.listCheckpoints({ pageSize: 1000 })).checkpoints.map((c) => c.ref!.uri);
    expect(listed).not.toContain(damaged.ref!.uri);
    expect(listed).toContain(f32.ref!.uri);
    expect((await rpcFailure(() => checkpoints.getCheckpoint({ checkpoint: refOf(damaged) }))).code).toBe(Code.DataLoss);
    await rm(dirname(manifest), { recursive: true, force: true });
  });
});

describe("DeleteCheckpoint", () => {
  it("deletes an adapter, then its base once nothing builds on it; refuses a parent in use and a shipped checkpoint", async () => {
    const doomed = await importDir(join(FIXTURES, "llama-f32-gqa"), { type: CheckpointType.BASE_MODEL, displayName: "to delete" });
    const over = await importDir(join(FIXTURES, "adapter-f32-gqa"), { type: CheckpointType.ADAPTER, base: refOf(doomed), displayName: "to delete too" });
    await embed.embed({ checkpoint: over.ref, texts: ["loaded into the cache"] });

    const inUse = await rpcFailure(() => checkpoints.deleteCheckpoint({ checkpoint: doomed.ref }));
    expect(inUse).toMatchObject({
      code: Code.FailedPrecondition,
      info: { reason: "CHECKPOINT_IN_USE", metadata: { field: "checkpoint", children: "1", child_uri: over.ref!.uri, child_digest: over.ref!.digest } },
    });
    expect(await deps.store.exists(refOf(doomed))).toBe(true);

    await checkpoints.deleteCheckpoint({ checkpoint: over.ref });
    for (const call of [() => checkpoints.getCheckpoint({ checkpoint: over.ref }), () => embed.embed({ checkpoint: over.ref, texts: ["x"] }), () => checkpoints.deleteCheckpoint({ checkpoint: over.ref })]) {
      expect(await rpcFailure(call), String(call)).toMatchObject({ code: Code.NotFound, info: { metadata: { field: "checkpoint" } } });
    }
    await checkpoints.deleteCheckpoint({ checkpoint: doomed.ref });
    expect(await deps.store.exists(refOf(doomed))).toBe(false);
    const listed = (await checkpoints.listCheckpoints({ pageSize: 1000 })).checkpoints.map((c) => c.ref!.uri);
    expect(listed).not.toContain(doomed.ref!.uri);
    expect(listed).not.toContain(over.ref!.uri);

    const shipped = await rpcFailure(() => checkpoints.deleteCheckpoint({ checkpoint: deps.builtins.moderation }));
    expect(shipped).toMatchObject({ code: Code.FailedPrecondition, info: { reason: "CHECKPOINT_BUILTIN" } });
    const bad = await rpcFailure(() => checkpoints.deleteCheckpoint({ checkpoint: { uri: "store://checkpoints/x", digest: "sha256:x" } }));
    expect(bad.code).toBe(Code.InvalidArgument);
  });
});
