/**
 * One training step (SFT and Vaccine) against PyTorch on the same machine, in the same run:
 * the four configs of issue 17 (4 layers x 128 with MLP 384 and 6 layers x 256 with MLP 768;
 * batch 8 x 64 tokens, vocab 2048, LoRA r 8 on all seven projections, AdamW with clipping),
 * median of 10 steps after 30 of warm-up, for
 *   - wasm-stock: the wasm backend's own kernels (VACCINE_NATIVE_KERNELS=off),
 *   - native-1t / native-2t: the OpenBLAS matmul kernel on 1 and 2 threads,
 *   - dp-2t: data-parallel on two worker threads (services/runtime/train/data-parallel.ts),
 *     each with the native kernels on 1 OpenBLAS thread and half the batch,
 *   - torch-1t / torch-2t: bench/train_step_torch.py on Debian's PyTorch (same OpenBLAS core
 *     as the native kernel, so both run the same sgemm code), one intra-op thread over 1 and 2
 *     OpenBLAS threads, as native-1t and native-2t.
 * Also the sgemm rate through the addon (1024^3, 1 and 2 threads) at the start, and around
 * every step on the case's cores (PyTorch: torch.mm), model FLOPs per step, MFU against both,
 * tokens/s, peak RSS, and how long the case's threads waited for a core taken by other load
 * (each case in its own process); and Vaccine's step over SFT's with the two alternating in one
 * process (ratioCase), ours and PyTorch's.
 * Writes bench/results/train-step.json. Run: npx tsx bench/train-step.ts
 * One case: npx tsx bench/train-step.ts --case <variant> <config> <method>; one ratio: --ratio <variant> <config>
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { loadBlasAddon, type BlasAddon } from "../services/runtime/native/blas-addon.ts";
import { LINEAR_MODULES } from "../services/runtime/model/llama.ts";
import { median } from "./stats.ts";
import { BATCH, CONFIGS, dataParallelSetup, llamaConfig, METHODS, RANK, RHO, stepFlops, TOKENS, trainingSetup, VOCAB, type ConfigName, type Method } from "./train-setup.ts";

const STEPS = 10;
// V8 compiles the step's code for its first tens of steps, on background threads that take a core
// from data-parallel training (4 x 128: 22.5 ms a step over steps 2-11, 14.4 over steps 62-121;
// one thread 21.3 and 19.8): 30 steps of warm-up, so the steps timed are a long job's.
const WARMUP = 30;
/** threads: cores the case uses; blasThreads: OpenBLAS threads of each training thread; dataParallel: worker threads (0: this one). */
const VARIANTS = {
  "wasm-stock": { native: "off", threads: 1, blasThreads: 1, dataParallel: 0 },
  "native-1t": { native: "auto", threads: 1, blasThreads: 1, dataParallel: 0 },
  "native-2t": { native: "auto", threads: 2, blasThreads: 2, dataParallel: 0 },
  "dp-2t": { native: "auto", threads: 2, blasThreads: 1, dataParallel: 2 },
} as const;
type Variant = keyof typeof VARIANTS;

/** The variant's backend and kernels, in this process. */
async function selectVariant(variant: Variant) {
  const { native, blasThreads } = VARIANTS[variant];
  const selection = await selectBackend("wasm", () => {}, { nativeKernels: native });
  const loaded = loadBlasAddon();
  if (native === "auto") {
    if (!("addon" in loaded) || !selection.nativeKernels?.active) throw new Error(`native kernels unavailable: ${selection.nativeKernels?.detail}`);
    loaded.addon.setThreads(blasThreads);
  }
  return { selection, loaded };
}

/** A training setup of the variant: step(i) runs step i. */
async function variantSetup(variant: Variant, configName: ConfigName, method: Method) {
  const { blasThreads, dataParallel } = VARIANTS[variant];
  return dataParallel > 0 ? await dataParallelSetup(configName, method, dataParallel, blasThreads) : { ...trainingSetup(configName, method), close: async () => {} };
}

/** One case in this process: returns its measurements. */
async function runCase(variant: Variant, configName: ConfigName, method: Method) {
  const { threads, blasThreads, dataParallel } = VARIANTS[variant];
  const { selection, loaded } = await selectVariant(variant);
  const setup = await variantSetup(variant, configName, method);
  // The sgemm rate around each step on the case's cores: load on the shared machine comes and
  // goes, and paired with the step it falls on both.
  const addon = "addon" in loaded ? loaded.addon : null;
  const gemm = addon && gemmTimer(addon);
  const pairedGemm = addon && gemm && (() => {
    addon.setThreads(threads);
    const ms = gemm();
    addon.setThreads(blasThreads);
    return ms;
  });
  const rates: number[] = [];
  const times: number[] = [];
  const cpuTimes: number[] = [];
  const waits: number[] = [];
  const losses: number[] = [];
  const tensorsBefore = tf.memory().numTensors;
  let threadTensors: number[][] = [];
  for (let i = 0; i < WARMUP + STEPS; i++) {
    const gemmBefore = pairedGemm?.();
    const c0 = process.cpuUsage();
    const w0 = runQueueWaitMs();
    const t0 = performance.now();
    const out = await setup.step(i);
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpuTimes.push((c.user + c.system) / 1000);
    waits.push(runQueueWaitMs() - w0);
    losses.push(out.loss);
    if ("threadTensors" in out) threadTensors.push(out.threadTensors);
    if (pairedGemm) rates.push(gemmGflops(Math.min(gemmBefore!, pairedGemm())));
  }
  await setup.close();
  const leaked = tf.memory().numTensors - tensorsBefore;
  // Tensors each worker thread holds after the first and the last step: equal when nothing leaks.
  threadTensors = threadTensors.length > 0 ? [threadTensors[0], threadTensors[threadTensors.length - 1]] : [];
  const timed = times.slice(WARMUP).sort((a, b) => a - b);
  return {
    variant, config: configName, method, threads,
    backend: selection.backend,
    kernels: selection.nativeKernels && { ...selection.nativeKernels, threads: "addon" in loaded ? loaded.addon.threads() : undefined },
    stepMs: median(timed),
    cpuMs: median(cpuTimes.slice(WARMUP)),
    runQueueWaitMs: median(waits.slice(WARMUP)),
    stepMsAll: times.slice(WARMUP),
    pairedSgemmGflops: rates.slice(WARMUP),
    minMs: timed[0],
    maxMs: timed[timed.length - 1],
    firstLoss: losses[0],
    lastLoss: losses[losses.length - 1],
    tensorsHeldAfter: leaked,
    ...(dataParallel > 0 && { dataParallelThreads: dataParallel, threadTensorsFirstLast: threadTensors }),
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  };
}

const RATIO_ROUNDS = 20;

/**
 * Vaccine's step time over SFT's for one variant and config: the two methods' steps alternate
 * in one process, the first of each round changing, so load that comes and goes falls on both
 * (the cases above each run alone, minutes apart, and their ratio moves by more than 0.1 with
 * the machine). The same on PyTorch: bench/train_step_torch.py's `ratio`.
 */
async function ratioCase(variant: Variant, configName: ConfigName) {
  const { selection } = await selectVariant(variant);
  const setups = { sft: await variantSetup(variant, configName, "sft"), vaccine: await variantSetup(variant, configName, "vaccine") };
  const rounds: Record<Method, number>[] = [];
  for (let i = 0; i < WARMUP + RATIO_ROUNDS; i++) {
    const ms = {} as Record<Method, number>;
    for (const method of i % 2 ? (["sft", "vaccine"] as const) : (["vaccine", "sft"] as const)) {
      const t0 = performance.now();
      await setups[method].step(i);
      ms[method] = performance.now() - t0;
    }
    if (i >= WARMUP) rounds.push(ms);
  }
  await Promise.all([setups.sft.close(), setups.vaccine.close()]);
  const sftMs = median(rounds.map((r) => r.sft));
  const vaccineMs = median(rounds.map((r) => r.vaccine));
  return {
    variant, config: configName, threads: VARIANTS[variant].threads, backend: selection.backend, rounds: rounds.length,
    sftMs, vaccineMs, ratioOfMedians: vaccineMs / sftMs, ratioMedianOfRounds: median(rounds.map((r) => r.vaccine / r.sft)),
  };
}

/**
 * Time this process's threads spent ready to run but without a core (Linux schedstat): other
 * load on the shared machine. A data-parallel step waits for its slowest thread, so it
 * suffers most from it.
 */
function runQueueWaitMs(): number {
  let ns = 0;
  for (const task of readdirSync("/proc/self/task")) {
    try {
      ns += Number(readFileSync(`/proc/self/task/${task}/schedstat`, "utf8").split(" ")[1]);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return ns / 1e6;
}

const GEMM_N = 1024;
const gemmGflops = (ms: number) => (2 * GEMM_N ** 3) / (ms / 1000) / 1e9;

/** A timer of one GEMM_N^3 sgemm through the addon, on its current thread count: ms. */
function gemmTimer(addon: BlasAddon): () => number {
  const n = GEMM_N;
  const heap = new ArrayBuffer(3 * n * n * 4);
  const f = new Float32Array(heap);
  for (let i = 0; i < 2 * n * n; i++) f[i] = Math.random() - 0.5;
  return () => {
    const t0 = performance.now();
    addon.gemm(heap, 0, n * n * 4, 2 * n * n * 4, 1, 1, n, n, n, false, false);
    return performance.now() - t0;
  };
}

/** sgemm GFLOP/s through the addon: median of 15 products of GEMM_N^3. */
function sgemmRate(threads: number): number {
  const loaded = loadBlasAddon();
  if (!("addon" in loaded)) throw new Error(loaded.error);
  loaded.addon.setThreads(threads);
  const once = gemmTimer(loaded.addon);
  for (let i = 0; i < 3; i++) once();
  return gemmGflops(median(Array.from({ length: 15 }, once)));
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
  if (process.argv[2] === "--ratio") {
    const [variant, config] = process.argv.slice(3) as [Variant, ConfigName];
    console.log(JSON.stringify(await ratioCase(variant, config)));
    return;
  }
  const started = { time: new Date().toISOString(), loadAverage: loadAverage() };
  const loaded = loadBlasAddon();
  const blas = "addon" in loaded ? loaded.addon.config() : loaded.error;
  const coreType = blas.match(/ (\w+) MAX_THREADS/)?.[1];
  const sgemm = "addon" in loaded ? { threads1: sgemmRate(1), threads2: sgemmRate(2) } : null;
  console.log("sgemm GFLOP/s", sgemm, blas);

  // One child process a case: ours (--case, --ratio) or PyTorch's (bench/train_step_torch.py).
  const ours = (variant: Variant, args: string[]) => {
    // After the paired sgemm on two OpenBLAS threads, OpenBLAS's second thread spins for
    // about 0.1 s (2^28 cycles) before it sleeps, at normal priority, taking a core from the
    // data-parallel threads (niced, as a job's are) for most of a step; a job's training
    // runs one OpenBLAS thread, so it has no such spin. 2^4 cycles: it sleeps at once.
    const env = VARIANTS[variant].dataParallel > 0 ? { ...process.env, OPENBLAS_THREAD_TIMEOUT: "4" } : process.env;
    const child = spawnSync(process.execPath, ["--import", "tsx", "bench/train-step.ts", ...args], { encoding: "utf8", env });
    if (child.status !== 0) throw new Error(`${args.join(" ")} failed:\n${child.stderr}`);
    return JSON.parse(child.stdout.trim().split("\n").pop()!);
  };
  const torch = (threads: number, args: string[]) => {
    // Debian's torch on the OpenBLAS core the addon uses (OpenBLAS 0.3.21 detects this CPU as Prescott).
    const env = { ...process.env, OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: String(threads) } as NodeJS.ProcessEnv;
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    if (coreType) env.OPENBLAS_CORETYPE = coreType;
    const py = spawnSync("/usr/bin/python3", ["bench/train_step_torch.py", ...args, String(threads)], { encoding: "utf8", env });
    if (py.status !== 0) return { variant: `torch-${threads}t`, args, error: py.stderr.trim().split("\n").pop() };
    return JSON.parse(py.stdout.trim().split("\n").pop()!);
  };
  const variants = (Object.keys(VARIANTS) as Variant[]).filter((v) => v === "wasm-stock" || sgemm);
  const log = <T>(x: T) => (console.log(JSON.stringify(x)), x);

  const cases: Record<string, unknown>[] = [];
  const ratios: Record<string, unknown>[] = [];
  for (const config of Object.keys(CONFIGS) as ConfigName[]) {
    for (const method of METHODS) {
      const flops = stepFlops(llamaConfig(config), method);
      for (const variant of variants) cases.push(log(withRates(ours(variant, ["--case", variant, config, method]), flops, sgemm)));
      for (const threads of [1, 2]) {
        const c = torch(threads, [config, method]);
        cases.push(log("error" in c ? c : withRates(c, flops, sgemm)));
      }
    }
    for (const variant of variants) ratios.push(log(ours(variant, ["--ratio", variant, config])));
    for (const threads of [1, 2]) ratios.push(log(torch(threads, [config, "ratio"])));
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
        ratios,
      },
      null,
      2,
    ) + "\n",
  );
}

/**
 * Rates from the median wall time; the CPU time's rate says what the step would reach on idle
 * cores. mfu is against the run's opening sgemm rate, mfuPaired the median over steps of each
 * step's rate against the sgemm rate measured around it.
 */
function withRates(c: { stepMs: number; cpuMs: number; threads: number; stepMsAll?: number[]; pairedSgemmGflops?: number[] } & Record<string, unknown>, flops: number, sgemm: { threads1: number; threads2: number } | null) {
  const gflops = flops / (c.stepMs / 1000) / 1e9;
  const peak = sgemm && (c.threads === 1 ? sgemm.threads1 : sgemm.threads2);
  const paired = c.pairedSgemmGflops?.length ? c.pairedSgemmGflops.map((rate, i) => flops / (c.stepMsAll![i] / 1000) / 1e9 / rate) : null;
  return {
    ...c,
    modelGflopPerStep: flops / 1e9,
    gflops,
    mfu: peak ? gflops / peak : null,
    pairedSgemmMedian: paired && median(c.pairedSgemmGflops!),
    mfuPaired: paired && median(paired),
    tokensPerSecond: (BATCH * TOKENS) / (c.stepMs / 1000),
    gflopsPerCpuSecond: flops / (c.cpuMs / 1000) / 1e9,
  };
}

await main();
