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
 * their own and, when given, the forward's gradient, so tfjs's tape differentiates it like
 * any op (an op run through `runFused` brings its gradient instead). Once per thread: tfjs's
 * registries are global.
 */
export function registerFused(forward: string, backward: string, kernels: { forward: tf.KernelFunc; backward: tf.KernelFunc }, gradient?: Omit<tf.GradConfig, "kernelName">): void {
  if (tf.getKernel(forward, "wasm")) return;
  tf.registerKernel({ kernelName: forward, backendName: "wasm", kernelFunc: kernels.forward });
  tf.registerKernel({ kernelName: backward, backendName: "wasm", kernelFunc: kernels.backward });
  if (gradient) tf.registerGradient({ kernelName: forward, ...gradient });
}

/**
 * Runs a fused op's forward kernel as a tf.customGrad op whose value is the kernel's first
 * output; the other outputs (what the backward reads: a softmax, rotated q and k) are saved
 * for the gradient rather than left as outputs of a tape node, for each of which tfjs would
 * make a zero gradient in JavaScript, copy it into the heap and keep it until the backward
 * pass ends (about 6 ms of a 4 x 128 step in a CPU profile; jobs' peak memory 5-44% higher). `inputs` are the differentiable operands, `constants`
 * the others, `reads` the operands the backward reads (saved with the outputs: the caller may
 * free its own); `gradient` gets dy, those operands by name and the other outputs, and returns
 * one gradient per input, in order. Off the tape nothing is saved and the other outputs are
 * freed.
 */
export function runFused<T extends tf.Tensor>(
  kernel: string,
  operands: { inputs: Record<string, tf.Tensor>; constants?: Record<string, tf.Tensor> },
  attrs: tf.NamedAttrMap,
  reads: string[],
  gradient: (dy: tf.Tensor, read: Record<string, tf.Tensor>, kept: tf.Tensor[]) => tf.Tensor[],
): T {
  const names = Object.keys(operands.inputs);
  const op = tf.customGrad((...args: unknown[]) => {
    const save = args[names.length] as tf.GradSaveFunc;
    const all: Record<string, tf.Tensor> = { ...operands.constants, ...Object.fromEntries(names.map((n, i) => [n, args[i] as tf.Tensor])) };
    const [value, ...kept] = tf.engine().runKernel(kernel, all, attrs) as tf.Tensor[];
    save([...reads.map((n) => all[n]), ...kept]);
    return {
      value,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) =>
        gradient(Array.isArray(dy) ? dy[0] : dy, Object.fromEntries(reads.map((n, i) => [n, saved[i]])), saved.slice(reads.length)),
    };
  });
  return op(...names.map((n) => operands.inputs[n])) as T;
}
