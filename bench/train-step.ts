/**
 * One training step (SFT and Vaccine) against PyTorch on the same machine, in the same run:
 * the four configs of issue 17 (4 layers x 128 with MLP 384 and 6 layers x 256 with MLP 768;
 * batch 8 x 64 tokens, vocab 2048, LoRA r 8 on all seven projections, AdamW with clipping),
 * median of 10 steps after 2 of warm-up, for
 *   - wasm-stock: the wasm backend's own kernels (VACCINE_NATIVE_KERNELS=off),
 *   - native-1t / native-2t: the OpenBLAS matmul kernel on 1 and 2 threads,
 *   - torch-1t / torch-2t: bench/train_step_torch.py on Debian's PyTorch (same OpenBLAS core
 *     as the native kernel, so both run the same sgemm code).
 * Also the sgemm rate through the addon (1024^3, 1 and 2 threads), model FLOPs per step, MFU
 * against that rate, tokens/s and peak RSS (each case in its own process).
 * Writes bench/results/train-step.json. Run: npx tsx bench/train-step.ts
 * One case: npx tsx bench/train-step.ts --case <variant> <config> <method>
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBlasAddon } from "../services/runtime/native/blas-addon.ts";
import { LINEAR_MODULES } from "../services/runtime/model/llama.ts";
import { BATCH, CONFIGS, llamaConfig, METHODS, RANK, RHO, stepFlops, TOKENS, trainingSetup, VOCAB, type ConfigName, type Method } from "./train-setup.ts";

const STEPS = 10;
const WARMUP = 2;
const VARIANTS = { "wasm-stock": { native: "off", threads: 1 }, "native-1t": { native: "auto", threads: 1 }, "native-2t": { native: "auto", threads: 2 } } as const;
type Variant = keyof typeof VARIANTS;

/** One case in this process: returns its measurements. */
async function runCase(variant: Variant, configName: ConfigName, method: Method) {
  const { native, threads } = VARIANTS[variant];
  const selection = await selectBackend("wasm", () => {}, { nativeKernels: native });
  const loaded = loadBlasAddon();
  if (native === "auto") {
    if (!("addon" in loaded) || !selection.nativeKernels?.active) throw new Error(`native kernels unavailable: ${selection.nativeKernels?.detail}`);
    loaded.addon.setThreads(threads);
  }
  const { step } = trainingSetup(configName, method);
  const times: number[] = [];
  const cpuTimes: number[] = [];
  const losses: number[] = [];
  const tensorsBefore = tf.memory().numTensors;
  for (let i = 0; i < WARMUP + STEPS; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    losses.push(step(i).loss);
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpuTimes.push((c.user + c.system) / 1000);
  }
  const leaked = tf.memory().numTensors - tensorsBefore;
  const timed = times.slice(WARMUP).sort((a, b) => a - b);
  return {
    variant, config: configName, method, threads,
    backend: selection.backend,
    kernels: selection.nativeKernels && { ...selection.nativeKernels, threads: "addon" in loaded ? loaded.addon.threads() : undefined },
    stepMs: median(timed),
    cpuMs: median(cpuTimes.slice(WARMUP)),
    minMs: timed[0],
    maxMs: timed[timed.length - 1],
    firstLoss: losses[0],
    lastLoss: losses[losses.length - 1],
    tensorsHeldAfter: leaked,
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2;
}

/** sgemm GFLOP/s through the addon: median of 15 products of n x n by n x n. */
function sgemmRate(threads: number, n = 1024): number {
  const loaded = loadBlasAddon();
  if (!("addon" in loaded)) throw new Error(loaded.error);
  loaded.addon.setThreads(threads);
  const heap = new ArrayBuffer(3 * n * n * 4);
  const f = new Float32Array(heap);
  for (let i = 0; i < 2 * n * n; i++) f[i] = Math.random() - 0.5;
  const once = () => {
    const t0 = performance.now();
    loaded.addon.gemm(heap, 0, n * n * 4, 2 * n * n * 4, 1, 1, n, n, n, false, false);
    return performance.now() - t0;
  };
  for (let i = 0; i < 3; i++) once();
  const ms = Array.from({ length: 15 }, once).sort((a, b) => a - b)[7];
  return (2 * n ** 3) / (ms / 1000) / 1e9;
}

function loadAverage(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}

async function main(): Promise<void> {
  if (process.argv[2] === "--case") {
    const [variant, config, method] = process.argv.slice(3) as [Variant, ConfigName, Method];
    console.log(JSON.stringify(await runCase(variant, config, method)));
    return;
  }
  const started = { time: new Date().toISOString(), loadAverage: loadAverage() };
  const loaded = loadBlasAddon();
  const blas = "addon" in loaded ? loaded.addon.config() : loaded.error;
  const coreType = blas.match(/ (\w+) MAX_THREADS/)?.[1];
  const sgemm = "addon" in loaded ? { threads1: sgemmRate(1), threads2: sgemmRate(2) } : null;
  console.log("sgemm GFLOP/s", sgemm, blas);

  const cases: Record<string, unknown>[] = [];
  for (const config of Object.keys(CONFIGS) as ConfigName[]) {
    for (const method of METHODS) {
      const flops = stepFlops(llamaConfig(config), method);
      for (const variant of Object.keys(VARIANTS) as Variant[]) {
        if (variant !== "wasm-stock" && !sgemm) continue;
        const child = spawnSync(process.execPath, ["--import", "tsx", "bench/train-step.ts", "--case", variant, config, method], { encoding: "utf8" });
        if (child.status !== 0) throw new Error(`case ${variant} ${config} ${method} failed:\n${child.stderr}`);
        cases.push(withRates(JSON.parse(child.stdout.trim().split("\n").pop()!), flops, sgemm));
        console.log(JSON.stringify(cases[cases.length - 1]));
      }
      for (const threads of [1, 2]) {
        // Debian's torch on the OpenBLAS core the addon uses (OpenBLAS 0.3.21 detects this CPU as Prescott).
        const env = { ...process.env, OMP_NUM_THREADS: String(threads) } as NodeJS.ProcessEnv;
        delete env.OPENBLAS_CORETYPE;
        delete env.OPENBLAS_L2_SIZE;
        if (coreType) env.OPENBLAS_CORETYPE = coreType;
        const py = spawnSync("/usr/bin/python3", ["bench/train_step_torch.py", config, method, String(threads)], { encoding: "utf8", env });
        if (py.status !== 0) {
          cases.push({ variant: `torch-${threads}t`, config, method, error: py.stderr.trim().split("\n").pop() });
          continue;
        }
        cases.push(withRates(JSON.parse(py.stdout.trim().split("\n").pop()!), flops, sgemm));
        console.log(JSON.stringify(cases[cases.length - 1]));
      }
    }
  }
  mkdirSync("bench/results", { recursive: true });
  writeFileSync(
    "bench/results/train-step.json",
    JSON.stringify(
      {
        machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, blas },
        setup: { batch: BATCH, tokens: TOKENS, vocab: VOCAB, loraRank: RANK, loraModules: LINEAR_MODULES, vaccineRho: RHO, optimizer: "AdamW (weight decay 0.1), global-norm clip 1", steps: STEPS, warmup: WARMUP, statistic: "median step time" },
        configs: CONFIGS,
        sgemmGflops: sgemm && { n: 1024, ...sgemm },
        load: { started, finished: { time: new Date().toISOString(), loadAverage: loadAverage() } },
        cases,
      },
      null,
      2,
    ) + "\n",
  );
}

/** Rates from the median wall time; the CPU time's rate says what the step would reach on idle cores. */
function withRates(c: { stepMs: number; cpuMs: number; threads: number } & Record<string, unknown>, flops: number, sgemm: { threads1: number; threads2: number } | null) {
  const gflops = flops / (c.stepMs / 1000) / 1e9;
  const peak = sgemm && (c.threads === 1 ? sgemm.threads1 : sgemm.threads2);
  return {
    ...c,
    modelGflopPerStep: flops / 1e9,
    gflops,
    mfu: peak ? gflops / peak : null,
    tokensPerSecond: (BATCH * TOKENS) / (c.stepMs / 1000),
    gflopsPerCpuSecond: flops / (c.cpuMs / 1000) / 1e9,
  };
}

await main();
