/**
 * The MLP's SwiGLU product, silu(gate) * up, as one kernel on the addon (native/blas/swiglu.c)
 * instead of a sigmoid and two products forward and about eight kernels backward; the forward
 * keeps the sigmoid for the backward. Registered under its own kernel names and run as an op
 * with its gradient; model/llama.ts uses it while the native kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, runFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineSwiGlu";
const BACKWARD = "VaccineSwiGluGrad";

/** Registers both kernels on the wasm backend. */
export function registerSwigluKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) });
}

/** gate * sigmoid(gate) * up for float32 tensors of one shape. */
export function swigluKernel<T extends tf.Tensor>(gate: T, up: T): T {
  return runFused<T>(FORWARD, { inputs: { gate, up } }, {}, ["gate", "up"], (dy, saved, [sigmoid]) =>
    [0, 1].map((which) => tf.engine().runKernel(BACKWARD, { dy, gate: saved.gate, up: saved.up, sigmoid }, { which }) as tf.Tensor),
  );
}

function forward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { gate, up } = args.inputs as { gate: tf.TensorInfo; up: tf.TensorInfo };
  if (gate.dtype !== "float32" || up.dtype !== "float32" || !tf.util.arraysEqual(gate.shape, up.shape)) {
    throw new Error(`swiglu: expected float32 gate and up of one shape; got ${gate.dtype} [${gate.shape}] and ${up.dtype} [${up.shape}]`);
  }
  const backend = args.backend as unknown as WasmBackend;
  const out = backend.makeOutput([...gate.shape], "float32");
  const sigmoid = backend.makeOutput([...gate.shape], "float32");
  addon.swiglu(heapBuffer(backend), heapOffset(backend, gate), heapOffset(backend, up), heapOffset(backend, out), heapOffset(backend, sigmoid), tf.util.sizeFromShape(gate.shape));
  return [out, sigmoid];
}

function backward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { dy, gate, up, sigmoid } = args.inputs as Record<"dy" | "gate" | "up" | "sigmoid", tf.TensorInfo>;
  const { which } = args.attrs as unknown as { which: number };
  const backend = args.backend as unknown as WasmBackend;
  const out = backend.makeOutput([...gate.shape], "float32");
  addon.swigluGrad(heapBuffer(backend), heapOffset(backend, dy), heapOffset(backend, gate), heapOffset(backend, up), heapOffset(backend, sigmoid), heapOffset(backend, out), tf.util.sizeFromShape(gate.shape), which);
  return out;
}
