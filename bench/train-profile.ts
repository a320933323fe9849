/**
 * Where a training step's time goes, per wasm kernel, in CPU time (the machine is shared:
 * wall time per kernel moves with the load, a thread's CPU time much less): every kernel of
 * the wasm backend is wrapped with a process.cpuUsage() reading, and 4 steps of a
 * bench/train-step.ts config are summed by kernel, the largest first, with the matrix
 * products by shape. Run: npx tsx bench/train-profile.ts [4x128|6x256] [sft|vaccine] [auto|off]
 */
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { trainingSetup, type ConfigName, type Method } from "./train-setup.ts";

const [configName = "4x128", method = "sft", native = "auto"] = process.argv.slice(2);
await selectBackend("wasm", (l) => console.error(l), { nativeKernels: native as "auto" | "off" });
const { step } = trainingSetup(configName as ConfigName, method as Method);
step(0);
step(1);

const byKernel = new Map<string, { us: number; calls: number }>();
const byShape = new Map<string, { us: number; calls: number }>();
const add = (m: Map<string, { us: number; calls: number }>, key: string, us: number) => {
  const e = m.get(key) ?? { us: 0, calls: 0 };
  e.us += us;
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
      const out = inner(args);
      const c = process.cpuUsage(c0);
      add(byKernel, k.kernelName, c.user + c.system);
      if (k.kernelName === tf.BatchMatMul) {
        const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
        const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
        add(byShape, `[${a.shape}]${transposeA ? "T" : ""} x [${b.shape}]${transposeB ? "T" : ""}`, c.user + c.system);
      }
      return out;
    },
  });
}
const STEPS = 4;
const c0 = process.cpuUsage();
for (let i = 2; i < 2 + STEPS; i++) step(i);
const c = process.cpuUsage(c0);
const perStep = (us: number) => (us / 1000 / STEPS).toFixed(1).padStart(7);
const inKernels = [...byKernel.values()].reduce((s, e) => s + e.us, 0);
console.log(`${configName} ${method} native=${native}: ${perStep(c.user + c.system)} ms CPU a step, ${perStep(inKernels)} ms in kernels`);
for (const [name, e] of [...byKernel].sort((x, y) => y[1].us - x[1].us).slice(0, 20)) console.log(`${name.padEnd(40)} ${perStep(e.us)} ms ${String(e.calls / STEPS).padStart(5)} calls`);
console.log("matrix products by shape:");
for (const [shape, e] of [...byShape].sort((x, y) => y[1].us - x[1].us).slice(0, 12)) console.log(`${shape.padEnd(40)} ${perStep(e.us)} ms ${String(e.calls / STEPS).padStart(5)} calls`);
