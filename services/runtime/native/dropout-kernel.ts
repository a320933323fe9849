/**
 * LoRA dropout's mask drawn by the addon (native/blas/dropout.c) straight into the wasm heap:
 * the same stream and values as model/lora.ts's dropoutMask, bit for bit, eight generators at
 * a time, without drawing it in JavaScript and copying it in (43-58 ms a pass of a 6 x 256
 * model over 512 rows, a sixth of its step). A kernel with no inputs, so that tfjs tracks the
 * mask like any tensor.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, type WasmBackend } from "./wasm-heap.ts";

const KERNEL = "VaccineDropoutMask";

/** Registers the kernel on the wasm backend. */
export function registerDropoutKernel(addon: BlasAddon): void {
  if (tf.getKernel(KERNEL, "wasm")) return;
  tf.registerKernel({
    kernelName: KERNEL,
    backendName: "wasm",
    kernelFunc: ({ attrs, backend }) => {
      const { shape, rate, seeds, skip } = attrs as unknown as { shape: number[]; rate: number; seeds: Uint32Array; skip: number };
      const wasm = backend as unknown as WasmBackend;
      const out = wasm.makeOutput(shape, "float32");
      addon.dropoutMask(heapBuffer(wasm), heapOffset(wasm, out), tf.util.sizeFromShape(shape), skip, rate, seeds);
      return out;
    },
  });
}

/** Values [skip, skip + size) of the mask's stream from its seeds (maskSeeds), as a tensor of `shape`; only while the native kernels are active. */
export function nativeDropoutMask(shape: number[], rate: number, seeds: Uint32Array, skip: number): tf.Tensor {
  return tf.engine().runKernel(KERNEL, {}, { shape, rate, seeds, skip } as unknown as tf.NamedAttrMap) as tf.Tensor;
}
