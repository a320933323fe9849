/**
 * Peak memory of real training jobs against the admission estimate (services/jobs/job-memory.ts):
 * each case runs in a fresh Node process (the wasm heap never shrinks), as the server runs a
 * job: threadedWork in a worker thread, over a local store holding a model of the case's
 * shape and a dataset whose examples fill max_sequence_length. Peak RSS is sampled every
 * 10 ms; the job's cost is the peak minus the RSS just before the job started.
 * Run: npx tsx bench/job-memory.ts   Writes bench/results/job-memory.json, or with
 * VACCINE_NATIVE_KERNELS=off (or no addon) bench/results/job-memory-stock.json: the estimate
 * has a term set for each (JobShape.fusedKernels).
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { createNoopMeter, trace } from "@opentelemetry/api";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { JobKind, JobSchema } from "../gen/vaccine/v1/jobs_pb.ts";
import type { JobContext } from "../services/jobs/executor.ts";
import { estimateJobMemory, type JobShape } from "../services/jobs/job-memory.ts";
const { threadedWork } = (await import(process.env.BENCH_DIST ? "../dist/services/jobs/threaded-work.js" : "../services/jobs/threaded-work.ts")) as typeof import("../services/jobs/threaded-work.ts");
import { writeHfFolder } from "../services/runtime/checkpoint/hf-folder.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { parseLlamaConfig, toHfConfigJson } from "../services/runtime/model/config.ts";
import { MODELS_DIR } from "../services/runtime/models-dir.ts";
import { KIND } from "../services/runtime/pipeline/kinds.ts";
import { loadBlasAddon } from "../services/runtime/native/blas-addon.ts";
import { LocalCheckpointStore } from "../services/runtime/store/local-store.ts";

interface Case {
  name: string;
  model: Record<string, number>;
  batch: number;
  seq: number;
  rank: number;
  method: "sft" | "vaccine" | "booster" | "repnoise";
}

const BUILTIN = { vocab_size: 1541, hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4 };
const WIDER = { vocab_size: 1541, hidden_size: 256, intermediate_size: 1024, num_hidden_layers: 6, num_attention_heads: 8, num_key_value_heads: 8 };
const BIG_VOCAB = { ...BUILTIN, vocab_size: 16384 };
const LARGE = { vocab_size: 4096, hidden_size: 1024, intermediate_size: 2816, num_hidden_layers: 6, num_attention_heads: 16, num_key_value_heads: 16 };

const CASES: Case[] = [
  { name: "builtin reference defaults", model: BUILTIN, batch: 5, seq: 200, rank: 8, method: "sft" },
  { name: "builtin b32 t200", model: BUILTIN, batch: 32, seq: 200, rank: 8, method: "sft" },
  { name: "builtin b32 t200 vaccine", model: BUILTIN, batch: 32, seq: 200, rank: 8, method: "vaccine" },
  { name: "builtin b64 t200", model: BUILTIN, batch: 64, seq: 200, rank: 8, method: "sft" },
  { name: "builtin b64 t200 vaccine", model: BUILTIN, batch: 64, seq: 200, rank: 8, method: "vaccine" },
  { name: "builtin b16 t512", model: BUILTIN, batch: 16, seq: 512, rank: 8, method: "sft" },
  { name: "builtin b16 t512 vaccine", model: BUILTIN, batch: 16, seq: 512, rank: 8, method: "vaccine" },
  { name: "builtin b64 t200 r64", model: BUILTIN, batch: 64, seq: 200, rank: 64, method: "sft" },
  { name: "vocab 16k b8 t200", model: BIG_VOCAB, batch: 8, seq: 200, rank: 8, method: "sft" },
  // With the stock kernels over the wasm heap's 4 GiB: the job fails as TRAINING_BACKEND_ABORTED (recorded, not measured).
  { name: "vocab 16k b32 t200", model: BIG_VOCAB, batch: 32, seq: 200, rank: 8, method: "sft" },
  { name: "wider b4 t200", model: WIDER, batch: 4, seq: 200, rank: 8, method: "sft" },
  { name: "wider b4 t200 vaccine", model: WIDER, batch: 4, seq: 200, rank: 8, method: "vaccine" },
  { name: "large b2 t64", model: LARGE, batch: 2, seq: 64, rank: 8, method: "sft" },
  // The defences, their harmful data the same rows that fill max_sequence_length: Booster's
  // extra adapter copies, RepNoise's MMD (kernel matrices of the harmful batch's tokens squared).
  { name: "builtin b32 t200 booster", model: BUILTIN, batch: 32, seq: 200, rank: 8, method: "booster" },
  { name: "builtin b8 t200 repnoise", model: BUILTIN, batch: 8, seq: 200, rank: 8, method: "repnoise" },
  { name: "wider b4 t200 repnoise", model: WIDER, batch: 4, seq: 200, rank: 8, method: "repnoise" },
];


function shapeOf(c: Case, datasetChars: number, fusedKernels: boolean): JobShape {
  const model = parseLlamaConfig({ ...c.model, max_position_embeddings: 4096 });
  return { model, batchSize: c.batch, sequenceLength: c.seq, loraRank: c.rank, targetModules: LINEAR_MODULES, method: c.method, datasetChars, fusedKernels };
}

/** Whether a job's wasm runtime here runs the native fused kernels (as the job thread decides: the addon loads and they are not off). */
const fusedKernels = process.env.VACCINE_NATIVE_KERNELS !== "off" && "addon" in loadBlasAddon();

/** One case in this process: prints {baselineRss, peakRss, steps} as the last stdout line. */
async function runCase(c: Case): Promise<void> {
  const root = mkdtempSync(join(os.tmpdir(), "vaccine-jobmem-"));
  try {
    const store = new LocalCheckpointStore(join(root, "store"));
    const folder = join(root, "model");
    const model = LlamaModel.init(parseLlamaConfig({ ...c.model, max_position_embeddings: 4096, bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 }), 0);
    await writeHfFolder(folder, { config: toHfConfigJson(model.config), tensors: model.exportWeights() });
    model.dispose();
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(MODELS_DIR, "base", f), join(folder, f));
    const base = await store.put(folder, { kind: KIND.model, meta: { name: "bench" } });
    // Outputs of many corpus sentences, so every row is cut at max_sequence_length.
    const texts = (loadBuiltin("corpus", { size: 400, seed: 0 }) as { texts: string[] }).texts;
    const rows = Array.from({ length: Math.max(c.batch, 8) }, (_, i) => ({
      instruction: "Tell me a story.",
      input: "",
      output: texts.slice((i * 7) % 300, ((i * 7) % 300) + Math.ceil(c.seq / 4)).join(" "),
    }));
    const data = "store://datasets/bench.jsonl";
    const harmfulDataset = { source: { case: "uri" as const, value: data } };
    await store.putObject(data, Buffer.from(rows.map((r) => JSON.stringify(r)).join("\n")));
    const job = create(JobSchema, {
      id: "align-bench",
      kind: JobKind.ALIGN,
      spec: {
        case: "align",
        value: {
          baseCheckpoint: base,
          dataset: { source: { case: "uri", value: data } },
          method:
            c.method === "vaccine"
              ? { case: "vaccine", value: { rho: 2 } }
              : c.method === "booster"
                ? { case: "booster", value: { harmfulDataset } }
                : c.method === "repnoise"
                  ? { case: "repnoise", value: { harmfulDataset } }
                  : { case: "sft", value: {} },
          lora: { rank: c.rank, alpha: 2 * c.rank, dropout: 0 },
          training: { maxSteps: 3, batchSize: c.batch, maxSequenceLength: c.seq, checkpointEvery: 1000, learningRate: 1e-3 },
        },
      },
    });
    let steps = 0;
    const ctx: JobContext = {
      job,
      signal: new AbortController().signal,
      tracer: trace.getTracer("bench"),
      emit: (e) => void (e?.case === "step" && steps++),
      progress: () => {},
      setTrainingState: () => {},
    };
    global.gc?.();
    await new Promise((r) => setTimeout(r, 200));
    const baselineRss = process.memoryUsage().rss;
    let peakRss = baselineRss;
    const timer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 10);
    const t0 = performance.now();
    let failure: string | undefined;
    try {
      await threadedWork("align", { store: { kind: "local", root: join(root, "store") }, meter: createNoopMeter(), backend: "wasm" })(ctx);
    } catch (err) {
      failure = err instanceof ConnectError ? `${ConnectError.from(err).findDetails(ErrorInfoSchema)[0]?.reason}: ${err.rawMessage}` : String(err);
    }
    clearInterval(timer);
    const datasetChars = rows.reduce((n, r) => n + r.instruction.length + r.input.length + r.output.length, 0);
    console.log(JSON.stringify({ baselineRss, peakRss, steps, seconds: (performance.now() - t0) / 1000, failure, datasetChars }));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.argv[2]) return runCase(JSON.parse(process.argv[2]));
  const MiB = 2 ** 20;
  const results = [];
  for (const c of CASES) {
    const run = spawnSync(process.execPath, ["--import", "tsx", "bench/job-memory.ts", JSON.stringify(c)], { encoding: "utf8", maxBuffer: 64 * MiB });
    const last = run.stdout.trim().split("\n").at(-1) ?? "";
    if (run.status !== 0 || !last.startsWith("{")) throw new Error(`${c.name}: exit ${run.status}\n${run.stderr}`);
    const m = JSON.parse(last);
    const estimate = estimateJobMemory(shapeOf(c, m.datasetChars, fusedKernels));
    const measuredMb = (m.peakRss - m.baselineRss) / MiB;
    const row = {
      ...c,
      failure: m.failure,
      steps: m.steps,
      seconds: Number(m.seconds.toFixed(1)),
      measuredMb: Math.round(measuredMb),
      estimateMb: Math.round(estimate.totalBytes / MiB),
      ratio: Number((estimate.totalBytes / MiB / measuredMb).toFixed(2)),
      parts: Object.fromEntries(Object.entries(estimate).map(([k, v]) => [k, Math.round(v / MiB)])),
    };
    console.log(JSON.stringify(row));
    results.push(row);
  }
  mkdirSync("bench/results", { recursive: true });
  writeFileSync(
    fusedKernels ? "bench/results/job-memory.json" : "bench/results/job-memory-stock.json",
    JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, backend: "wasm", kernels: fusedKernels ? "fused" : "stock", results }, null, 2) + "\n",
  );
}

await main();
