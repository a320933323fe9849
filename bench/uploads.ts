/**
 * Bringing data and models in and taking them out, against the compiled server as its own
 * process (VACCINE_SERVICES=datasets,checkpoints, a temp store): throughput (MB/s, 10^6
 * bytes) of a large JSONL upload, its download, a checkpoint import, and its export MERGED
 * in F32 and AS_STORED; and the server's resident memory during each (sampled from
 * /proc/<pid>/status, with its peak counter reset before each phase where the kernel allows).
 * The client streams what it sends from a generator and counts what it receives without
 * keeping it, so neither side needs the whole file in memory.
 *
 * Run: npm run build && npx tsx bench/uploads.ts   (DATASET_MIB, CHECKPOINT_MB to resize)
 * Writes bench/results/uploads.json.
 */
import { spawn } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { CheckpointService, CheckpointType, ExportFormat, TensorDtype } from "../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetFormat } from "../gen/vaccine/v1/common_pb.ts";
import { DatasetService } from "../gen/vaccine/v1/datasets_pb.ts";
import { copyFile, writeFile } from "node:fs/promises";
import { writeSafetensorsFile } from "../services/runtime/checkpoint/safetensors.ts";
import { parseLlamaConfig } from "../services/runtime/model/config.ts";
import { llamaWeightShapes } from "../services/runtime/model/llama.ts";
import { Rng } from "../services/runtime/rng.ts";

const MIB = 1024 * 1024;
const DATASET_BYTES = Number(process.env.DATASET_MIB ?? 512) * MIB;
const CHECKPOINT_BYTES = Number(process.env.CHECKPOINT_MB ?? 500) * 1e6;
/** What the CLI sends per message. */
const CHUNK_BYTES = MIB;

if (!existsSync("dist/services/main.js")) throw new Error("dist/ is missing: run npm run build first");
const root = mkdtempSync(join(os.tmpdir(), "vaccine-bench-uploads-"));
// The machine may be shared: the load before and after says how far to trust the rates.
const loadAtStart = os.loadavg()[0];

/** The server under test: the compiled build, alone in its process, its temp files under root. */
async function startServer() {
  mkdirSync(join(root, "tmp"));
  const child = spawn(process.execPath, ["dist/services/main.js"], {
    env: {
      ...process.env,
      VACCINE_SERVICES: "datasets,checkpoints",
      VACCINE_PORT: "0",
      VACCINE_STORE_ROOT: join(root, "store"),
      VACCINE_JOBS_DIR: join(root, "jobs"),
      VACCINE_LOG_LEVEL: "info",
      // Upload spools and import/export work folders go to os.tmpdir(): keep them here.
      TMPDIR: join(root, "tmp"),
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.on("data", (chunk: Buffer) => {
      log += chunk.toString();
      const line = log.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) resolve(JSON.parse(line).port);
    });
    child.once("exit", (code) => reject(new Error(`server exited ${code} before serving:\n${log}`)));
  });
  return { child, port, exited };
}

/** kB values of /proc/<pid>/status. */
function status(pid: number): { rssKb: number; hwmKb: number } {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? NaN);
  return { rssKb: kb("VmRSS"), hwmKb: kb("VmHWM") };
}

/** Samples the server's RSS every 20 ms while fn runs; the peak counter is reset first when allowed. */
async function measured<T>(pid: number, fn: () => Promise<T>) {
  let hwmReset = true;
  try {
    // "5" resets VmHWM to the current RSS (Linux 4.0+).
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
  } catch {
    hwmReset = false;
  }
  const before = status(pid).rssKb;
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, status(pid).rssKb)), 20);
  let clientPeak = process.memoryUsage().rss;
  const clientTimer = setInterval(() => (clientPeak = Math.max(clientPeak, process.memoryUsage().rss)), 20);
  const t0 = performance.now();
  try {
    const result = await fn();
    const seconds = (performance.now() - t0) / 1000;
    const after = status(pid);
    peak = Math.max(peak, after.rssKb);
    return {
      result,
      seconds,
      server_rss_before_mib: mib(before * 1024),
      server_rss_peak_mib: mib(Math.max(peak, hwmReset ? after.hwmKb : 0) * 1024),
      server_peak_from: hwmReset ? "VmHWM after a reset, and VmRSS every 20 ms" : "VmRSS every 20 ms",
      client_rss_peak_mib: mib(clientPeak),
    };
  } finally {
    clearInterval(timer);
    clearInterval(clientTimer);
  }
}

const mib = (bytes: number) => Math.round((bytes / MIB) * 10) / 10;
const mbps = (bytes: number, seconds: number) => Math.round((bytes / 1e6 / seconds) * 10) / 10;

/**
 * JSONL refusal rows, DATASET_BYTES in total, made on the fly: a 1 MiB block of varied
 * rows (whole lines) is built once and sent repeatedly, the last block cut at a line end.
 */
function* datasetChunks(): Generator<Buffer> {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < CHUNK_BYTES; i++) {
    const line = JSON.stringify({
      prompt: `Request ${i}: how would someone get into building ${i % 97} without a key, step by step?`,
      response: `I can't help with getting into places without permission (case ${i}). If you are locked out, call the owner or a licensed locksmith.`,
    }) + "\n";
    if (size + Buffer.byteLength(line) > CHUNK_BYTES) break;
    lines.push(line);
    size += Buffer.byteLength(line);
  }
  const block = Buffer.from(lines.join(""));
  for (let sent = 0; sent < DATASET_BYTES; ) {
    const chunk = sent + block.byteLength <= DATASET_BYTES ? block : block.subarray(0, block.lastIndexOf(0x0a, DATASET_BYTES - sent - 1) + 1);
    if (chunk.byteLength === 0) break;
    sent += chunk.byteLength;
    yield chunk;
  }
}

/**
 * A Hugging Face Llama folder with seeded uniform F32 weights (the values do not matter here)
 * in 3 shards with an index, and the test fixtures' tokenizer (512 tokens); one tensor is
 * held at a time.
 */
async function writeModelFolder(dir: string, config: Record<string, unknown>): Promise<void> {
  mkdirSync(dir);
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join("tests/fixtures/llama-f32-gqa", file), join(dir, file));
  const shapes = llamaWeightShapes(parseLlamaConfig(config));
  const names = [...shapes.keys()].sort();
  const shards = 3;
  const size = (name: string) => shapes.get(name)!.reduce((a, b) => a * b, 1) * 4;
  const total = names.reduce((n, name) => n + size(name), 0);
  const rng = new Rng(0);
  const weightMap: Record<string, string> = {};
  let next = 0;
  let done = 0;
  for (let shard = 0; shard < shards; shard++) {
    const file = `model-0000${shard + 1}-of-0000${shards}.safetensors`;
    // Tensors in name order until the shard's share of the bytes; the last takes the rest.
    const group: string[] = [];
    while (next < names.length && (shard === shards - 1 || done < ((shard + 1) * total) / shards)) {
      group.push(names[next]);
      done += size(names[next++]);
    }
    const values = async (name: string) => rng.uniformArray(size(name) / 4, -0.05, 0.05);
    await writeSafetensorsFile(join(dir, file), group.map((name) => ({ name, shape: shapes.get(name)! })), values, { metadata: { format: "pt" } });
    for (const name of group) weightMap[name] = file;
  }
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
}

/** Every file of a folder, relative paths, sorted (the folder is flat). */
const folderFiles = (dir: string) => readdirSync(dir).sort().map((path) => ({ path, size: statSync(join(dir, path)).size }));

// --- a ~CHECKPOINT_BYTES F32 Llama folder: GQA, untied head, 3 shards -------------------
const hidden = 1024;
const perLayer = 4 * (2 * hidden + hidden * hidden * 2 + (hidden / 4) * hidden * 2 + 2816 * hidden * 3);
const vocab = 512;
const layers = Math.max(1, Math.round((CHECKPOINT_BYTES - 4 * (2 * vocab * hidden + hidden)) / perLayer));
const modelDir = join(root, "model");
const generateStart = performance.now();
await writeModelFolder(modelDir, {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: vocab, hidden_size: hidden, intermediate_size: 2816,
  num_hidden_layers: layers, num_attention_heads: 16, num_key_value_heads: 4, head_dim: 64, max_position_embeddings: 512,
  rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: "float32",
});
const modelFiles = folderFiles(modelDir);
const modelBytes = modelFiles.reduce((n, f) => n + f.size, 0);
console.error(`wrote a ${layers}-layer F32 folder, ${mib(modelBytes)} MiB, in ${((performance.now() - generateStart) / 1000).toFixed(1)} s`);

const server = await startServer();
const pid = server.child.pid!;
const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
const datasets = createClient(DatasetService, transport);
const checkpoints = createClient(CheckpointService, transport);
const idle = status(pid);

try {
  // --- dataset upload and download -----------------------------------------------------
  const upload = await measured(pid, async () => {
    async function* messages() {
      yield { content: { case: "metadata" as const, value: { displayName: "bench", format: DatasetFormat.REFUSAL } } };
      for (const chunk of datasetChunks()) yield { content: { case: "chunk" as const, value: chunk } };
    }
    return (await datasets.uploadDataset(messages())).dataset!;
  });
  const dataset = upload.result;
  console.error(`upload: ${dataset.sizeBytes} bytes, ${dataset.rowCount} rows in ${upload.seconds.toFixed(1)} s`);
  const download = await measured(pid, async () => {
    let bytes = 0;
    for await (const { chunk } of datasets.downloadDataset({ uri: dataset.uri })) bytes += chunk.byteLength;
    return bytes;
  });

  // --- checkpoint import and exports ----------------------------------------------------
  const imported = await measured(pid, async () => {
    async function* messages() {
      yield { content: { case: "metadata" as const, value: { type: CheckpointType.BASE_MODEL, displayName: "bench" } } };
      for (const { path } of modelFiles) {
        for await (const data of createReadStream(join(modelDir, path), { highWaterMark: CHUNK_BYTES }) as AsyncIterable<Buffer>) {
          yield { content: { case: "chunk" as const, value: { path, data } } };
        }
      }
    }
    return (await checkpoints.importCheckpoint(messages())).checkpoint!;
  });
  console.error(`import: ${mib(modelBytes)} MiB in ${imported.seconds.toFixed(1)} s`);
  const exportAs = (format: ExportFormat, dtype: TensorDtype) =>
    measured(pid, async () => {
      let bytes = 0;
      const files = new Set<string>();
      for await (const m of checkpoints.exportCheckpoint({ checkpoint: imported.result.ref, format, dtype })) {
        bytes += m.data.byteLength;
        files.add(m.path);
      }
      return { bytes, files: files.size };
    });
  const merged = await exportAs(ExportFormat.MERGED, TensorDtype.F32);
  console.error(`export merged: ${mib(merged.result.bytes)} MiB in ${merged.seconds.toFixed(1)} s`);
  const stored = await exportAs(ExportFormat.AS_STORED, TensorDtype.UNSPECIFIED);
  console.error(`export as stored: ${mib(stored.result.bytes)} MiB in ${stored.seconds.toFixed(1)} s`);

  const phase = (m: Awaited<ReturnType<typeof measured>>, bytes: number, extra: Record<string, unknown> = {}) => {
    const { result: _result, ...rest } = m;
    return { bytes, mb_per_s: mbps(bytes, m.seconds), ...extra, ...rest, seconds: Math.round(m.seconds * 100) / 100 };
  };
  const result = {
    bench: "uploads",
    what:
      "the compiled server alone in its process (VACCINE_SERVICES=datasets,checkpoints, local store on a temp folder); " +
      "a gRPC client (connect-node) in another process streams 1 MiB messages from a generator and drops what it receives; " +
      "MB/s are 10^6 bytes per second from the first message to the response or the end of the stream; " +
      "server RSS sampled from /proc/<pid>/status",
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, load_average_1m: { start: loadAtStart, end: os.loadavg()[0] } },
    server_rss_idle_mib: mib(idle.rssKb * 1024),
    dataset: {
      rows: Number(dataset.rowCount),
      generated: "JSONL refusal rows ({prompt, response}, about 240 bytes a line); a 1 MiB block of distinct rows sent repeatedly",
      upload: phase(upload, Number(dataset.sizeBytes), { mib: mib(Number(dataset.sizeBytes)) }),
      download: phase(download, download.result),
    },
    checkpoint: {
      model: { layers, hidden_size: hidden, intermediate_size: 2816, heads: 16, kv_heads: 4, vocab, dtype: "F32", parameters: Number(imported.result.model!.parameterCount), files: modelFiles.length, mib: mib(modelBytes) },
      import: phase(imported, modelBytes),
      export_merged_f32: phase(merged, merged.result.bytes, { files: merged.result.files }),
      export_as_stored: phase(stored, stored.result.bytes, { files: stored.result.files }),
    },
  };
  mkdirSync("bench/results", { recursive: true });
  writeFileSync("bench/results/uploads.json", JSON.stringify(result, null, 2) + "\n");
  console.log(
    JSON.stringify({
      upload_mb_s: result.dataset.upload.mb_per_s,
      upload_server_rss_peak_mib: result.dataset.upload.server_rss_peak_mib,
      import_mb_s: result.checkpoint.import.mb_per_s,
      export_merged_mb_s: result.checkpoint.export_merged_f32.mb_per_s,
      export_stored_mb_s: result.checkpoint.export_as_stored.mb_per_s,
    }),
  );
} finally {
  server.child.kill("SIGTERM");
  await server.exited;
  rmSync(root, { recursive: true, force: true });
}
