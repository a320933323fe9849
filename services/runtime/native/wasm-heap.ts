/** What the native kernels working in the wasm backend's heap share. */
import * as tf from "@tensorflow/tfjs";

/** What the wasm backend's internals offer such a kernel (tfjs-backend-wasm's BackendWasm). */
export interface WasmBackend {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: { get(dataId: object): { memoryOffset: number; refCount: number } | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: object): void;
}

/** The byte offset of a tensor's values in the wasm heap. */
export function heapOffset(backend: WasmBackend, t: tf.TensorInfo): number {
  return backend.dataIdMap.get(t.dataId)!.memoryOffset;
}

/** The heap's buffer; read it after makeOutput, which may have grown (and so replaced) it. */
export function heapBuffer(backend: WasmBackend): ArrayBuffer {
  return backend.wasm.HEAPU8.buffer as ArrayBuffer;
}

/**
 * Registers a fused op: its forward and backward kernels on the wasm backend under names of
 * their own, and the forward's gradient, so tfjs's tape differentiates it like any op. Once
 * per thread: tfjs's registries are global.
 */
export function registerFused(forward: string, backward: string, kernels: { forward: tf.KernelFunc; backward: tf.KernelFunc }, gradient: Omit<tf.GradConfig, "kernelName">): void {
  if (tf.getKernel(forward, "wasm")) return;
  tf.registerKernel({ kernelName: forward, backendName: "wasm", kernelFunc: kernels.forward });
  tf.registerKernel({ kernelName: backward, backendName: "wasm", kernelFunc: kernels.backward });
  tf.registerGradient({ kernelName: forward, ...gradient });
}
