/**
 * Where a training step's time goes, per wasm kernel: every kernel of the wasm backend is
 * wrapped with a wall-clock and a process.cpuUsage() reading, and 20 steps of a
 * bench/train-step.ts config (after 10 of warm-up, so the JIT has settled) are summed by
 * kernel, the largest first, with the matrix products by shape. Wall time is this thread's
 * (read it on a quiet machine); CPU time is the whole process's, V8's background threads
 * (compilation, GC) included, so it moves less with the load but counts more than the kernel.
 * The rest of the step's wall time is tfjs's own work between kernels.
 * Run: npx tsx bench/train-profile.ts [4x128|6x256] [sft|vaccine] [auto|off]
 */
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { trainingSetup, type ConfigName, type Method } from "./train-setup.ts";

const [configName = "4x128", method = "sft", native = "auto"] = process.argv.slice(2);
await selectBackend("wasm", (l) => console.error(l), { nativeKernels: native as "auto" | "off" });
const { step } = trainingSetup(configName as ConfigName, method as Method);
for (let i = 0; i < 10; i++) step(i);

interface Spent {
  wallUs: number;
  cpuUs: number;
  calls: number;
}
const byKernel = new Map<string, Spent>();
const byShape = new Map<string, Spent>();
const add = (m: Map<string, Spent>, key: string, wallUs: number, cpuUs: number) => {
  const e = m.get(key) ?? { wallUs: 0, cpuUs: 0, calls: 0 };
  e.wallUs += wallUs;
  e.cpuUs += cpuUs;
  e.calls++;
  m.set(key, e);
};
for (const k of tf.getKernelsForBackend("wasm")) {
  const inner = k.kernelFunc;
  tf.unregisterKernel(k.kernelName, "wasm");
  tf.registerKernel({
    ...k,
    kernelFunc: (args) => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const out = inner(args);
      const wall = (performance.now() - t0) * 1000;
      const c = process.cpuUsage(c0);
      add(byKernel, k.kernelName, wall, c.user + c.system);
      if (k.kernelName === tf.BatchMatMul) {
        const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
        const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
        add(byShape, `[${a.shape}]${transposeA ? "T" : ""} x [${b.shape}]${transposeB ? "T" : ""}`, wall, c.user + c.system);
      }
      return out;
    },
  });
}
const STEPS = 20;
const c0 = process.cpuUsage();
const t0 = performance.now();
for (let i = 10; i < 10 + STEPS; i++) step(i);
const wall = (performance.now() - t0) * 1000;
const c = process.cpuUsage(c0);
const perStep = (us: number) => (us / 1000 / STEPS).toFixed(1).padStart(7);
const inKernels = (key: "wallUs" | "cpuUs") => [...byKernel.values()].reduce((s, e) => s + e[key], 0);
console.log(
  `${configName} ${method} native=${native}, a step: ${perStep(wall)} ms wall, ${perStep(inKernels("wallUs"))} of it in kernels; ` +
    `${perStep(c.user + c.system)} ms CPU, ${perStep(inKernels("cpuUs"))} in kernels`,
);
const table = (m: Map<string, Spent>, rows: number) => {
  console.log(`${"".padEnd(40)} ${"wall ms".padStart(10)} ${"CPU ms".padStart(10)} ${"calls".padStart(6)}`);
  for (const [name, e] of [...m].sort((x, y) => y[1].wallUs - x[1].wallUs).slice(0, rows)) {
    console.log(`${name.padEnd(40)} ${perStep(e.wallUs).padStart(10)} ${perStep(e.cpuUs).padStart(10)} ${String(e.calls / STEPS).padStart(6)}`);
  }
};
table(byKernel, 20);
console.log("matrix products by shape:");
table(byShape, 12);
