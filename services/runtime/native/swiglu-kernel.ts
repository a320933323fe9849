/**
 * The MLP's SwiGLU product, silu(gate) * up, as one kernel on the addon (native/blas/swiglu.c)
 * instead of a sigmoid and two products forward and about eight kernels backward; the forward
 * keeps the sigmoid for the backward. Registered under its own kernel names with its
 * gradient; model/llama.ts uses it while the native kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineSwiGlu";
const BACKWARD = "VaccineSwiGluGrad";

/** Registers both kernels on the wasm backend and the gradient. */
export function registerSwigluKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) }, {
    inputsToSave: ["gate", "up"],
    outputsToSave: [false, true],
    gradFunc: (dy, saved) => {
      const [gate, up, sigmoid] = saved;
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const grad = (which: number) => () => tf.engine().runKernel(BACKWARD, { dy: dOut, gate, up, sigmoid }, { which }) as tf.Tensor;
      return { gate: grad(0), up: grad(1) };
    },
  });
}

/** gate * sigmoid(gate) * up for float32 tensors of one shape. */
export function swigluKernel<T extends tf.Tensor>(gate: T, up: T): T {
  const [out, sigmoid] = tf.engine().runKernel(FORWARD, { gate, up }) as [T, T];
  sigmoid.dispose(); // kept by the tape while a gradient is recorded
  return out;
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
