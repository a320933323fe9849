/**
 * RMSNorm as one kernel on the addon (native/blas/rms_norm.c), forward and backward, instead
 * of six wasm kernels forward and about a dozen backward, each a pass over the activations.
 * Registered under its own kernel names with its gradient; model/llama.ts's rmsNorm uses it
 * while the native kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineRmsNorm";
const BACKWARD = "VaccineRmsNormGrad";

/** Registers both kernels on the wasm backend and the gradient. */
export function registerRmsNormKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) }, {
    inputsToSave: ["x", "weight"],
    outputsToSave: [false, true],
    gradFunc: (dy, saved) => {
      const [x, weight, r] = saved;
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      return {
        x: () => tf.engine().runKernel(BACKWARD, { dy: dOut, x, weight, r }) as tf.Tensor,
        // Only full-weight training asks for it: plain ops suffice.
        weight: () => dOut.mul(x).mul(r.expandDims(-1)).reshape([-1, weight.size]).sum(0),
      };
    },
  });
}

/** x * rsqrt(mean(x^2) + eps) * weight over the last axis, for float32 x [..., width] and weight [width]. */
export function rmsNormKernel<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  const [y, r] = tf.engine().runKernel(FORWARD, { x, weight }, { eps }) as [T, tf.Tensor];
  r.dispose(); // kept by the tape while a gradient is recorded
  return y;
}

function forward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { x, weight } = args.inputs as { x: tf.TensorInfo; weight: tf.TensorInfo };
  const { eps } = args.attrs as unknown as { eps: number };
  const width = x.shape[x.shape.length - 1];
  if (x.dtype !== "float32" || weight.dtype !== "float32" || weight.shape.length !== 1 || weight.shape[0] !== width) {
    throw new Error(`rmsNorm: expected float32 x [..., width] and weight [width]; got ${x.dtype} [${x.shape}] and ${weight.dtype} [${weight.shape}]`);
  }
  const backend = args.backend as unknown as WasmBackend;
  const y = backend.makeOutput([...x.shape], "float32");
  const r = backend.makeOutput(x.shape.slice(0, -1), "float32");
  const rows = tf.util.sizeFromShape(r.shape);
  addon.rmsNorm(heapBuffer(backend), heapOffset(backend, x), heapOffset(backend, weight), heapOffset(backend, y), heapOffset(backend, r), rows, width, eps);
  return [y, r];
}

function backward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { dy, x, weight, r } = args.inputs as Record<"dy" | "x" | "weight" | "r", tf.TensorInfo>;
  const backend = args.backend as unknown as WasmBackend;
  const dx = backend.makeOutput([...x.shape], "float32");
  const width = x.shape[x.shape.length - 1];
  addon.rmsNormGrad(heapBuffer(backend), heapOffset(backend, dy), heapOffset(backend, x), heapOffset(backend, weight), heapOffset(backend, r), heapOffset(backend, dx), tf.util.sizeFromShape(r.shape), width);
  return dx;
}
