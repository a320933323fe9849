/**
 * Kernels replacing the wasm backend's where it is slow: BatchMatMul on native OpenBLAS, Exp
 * (a vectorised polynomial) and the embedding lookup's GatherV2 as row copies (the addon, native/blas/;
 * wasm's gather walks every element with its strides), and an Identity (and a Cast to the
 * same dtype) without a copy (wasm-identity.ts). The loss, RMSNorm, the SwiGLU product, the LoRA
 * projection and attention get fused kernels of their own (cross-entropy-kernel.ts,
 * rms-norm-kernel.ts, swiglu-kernel.ts, lora-linear-kernel.ts, attention-kernel.ts).
 * The native kernels read their operands and write their result in the wasm heap in place (a
 * copy out and back costs about as much as the product). Each stock kernel stays behind its
 * replacement for what it does not take (non-float32, a batch broadcast other than 1 against
 * N) and is put back when the native path is turned off (VACCINE_NATIVE_KERNELS=off).
 */
import * as tf from "@tensorflow/tfjs";
import { coreTypeNote, loadBlasAddon, type BlasAddon } from "./blas-addon.ts";
import { registerAttentionKernels } from "./attention-kernel.ts";
import { registerCrossEntropyKernels } from "./cross-entropy-kernel.ts";
import { registerDecoderBlockKernels } from "./decoder-block-kernel.ts";
import { registerDropoutKernel } from "./dropout-kernel.ts";
import { registerLoraLinearKernels } from "./lora-linear-kernel.ts";
import { registerRmsNormKernels } from "./rms-norm-kernel.ts";
import { registerSwigluKernels } from "./swiglu-kernel.ts";
import { heapBuffer, heapOffset, type WasmBackend } from "./wasm-heap.ts";
import { sharingCast, sharingIdentity } from "./wasm-identity.ts";

export const NATIVE_KERNEL_MODES = ["auto", "off"] as const;
export type NativeKernelMode = (typeof NATIVE_KERNEL_MODES)[number];

export interface NativeKernels {
  /** True when BatchMatMul on wasm runs on OpenBLAS. */
  active: boolean;
  /** Why it is or is not: the OpenBLAS build and core in use, or the reason for the fallback. */
  detail: string;
  /** OpenBLAS threads when active. */
  threads?: number;
}

/** Marks a replacement with the stock kernel behind it, found again by another copy of this module (tfjs's registry is global). */
const STOCK = Symbol.for("vaccine.stockKernel");
type ReplacedConfig = tf.KernelConfig & { [STOCK]?: tf.KernelConfig };

let active: NativeKernels = { active: false, detail: "not installed" };

/** Whether the native kernels (the addon's products and the fused ones) run on the current backend (read per call: tests switch backends). */
export function nativeKernelsActive(): boolean {
  return active.active && tf.getBackend() === "wasm";
}

/**
 * Installs (mode auto) or removes (mode off) the replacements: the native ones when the addon
 * loads, the copy-free Identity in any case; call after the wasm backend is registered.
 * Returns what is in force and why.
 */
export function configureNativeKernels(mode: NativeKernelMode): NativeKernels {
  if (!tf.getKernel(tf.BatchMatMul, "wasm")) return (active = { active: false, detail: "the wasm backend is not registered" });
  if (mode === "off") {
    for (const name of [tf.BatchMatMul, tf.Exp, tf.GatherV2, tf.Identity, tf.Cast]) restore(name);
    return (active = { active: false, detail: "off (VACCINE_NATIVE_KERNELS=off)" });
  }
  install(tf.Identity, sharingIdentity);
  install(tf.Cast, sharingCast);
  const loaded = loadBlasAddon();
  if ("error" in loaded) {
    for (const name of [tf.BatchMatMul, tf.Exp, tf.GatherV2]) restore(name);
    return (active = { active: false, detail: loaded.error });
  }
  install(tf.BatchMatMul, (stock) => nativeBatchMatMul(loaded.addon, stock));
  install(tf.Exp, (stock) => nativeExp(loaded.addon, stock));
  install(tf.GatherV2, (stock) => nativeGather(loaded.addon, stock));
  registerCrossEntropyKernels(loaded.addon);
  registerRmsNormKernels(loaded.addon);
  registerSwigluKernels(loaded.addon);
  registerLoraLinearKernels(loaded.addon);
  registerAttentionKernels(loaded.addon);
  registerDecoderBlockKernels(loaded.addon);
  registerDropoutKernel(loaded.addon);
  const note = coreTypeNote();
  return (active = { active: true, detail: note ? `${loaded.addon.config()}; ${note}` : loaded.addon.config(), threads: loaded.addon.threads() });
}

function install(kernelName: string, make: (stock: tf.KernelConfig) => tf.KernelConfig): void {
  const registered = tf.getKernel(kernelName, "wasm") as ReplacedConfig | undefined;
  if (!registered || registered[STOCK]) return;
  const config: ReplacedConfig = make(registered);
  config[STOCK] = registered;
  replaceKernel(config);
}

function restore(kernelName: string): void {
  const stock = (tf.getKernel(kernelName, "wasm") as ReplacedConfig | undefined)?.[STOCK];
  if (stock) replaceKernel(stock);
}

function replaceKernel(config: tf.KernelConfig): void {
  // Unregister first: registering over a kernel logs a warning.
  tf.unregisterKernel(config.kernelName, config.backendName);
  tf.registerKernel(config);
}

function nativeBatchMatMul(addon: BlasAddon, fallback: tf.KernelConfig): tf.KernelConfig {
  const kernelFunc: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
    const batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
    const broadcastable = batchA === batchB || batchA === 1 || batchB === 1;
    if (a.dtype !== "float32" || b.dtype !== "float32" || !broadcastable) return fallback.kernelFunc(args);

    const [ra, rb] = [a.shape.length, b.shape.length];
    const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
    const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
    const kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
    const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
    if (k !== kb) {
      throw new Error(`Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`);
    }
    const outer = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const backend = args.backend as unknown as WasmBackend;
    const out = backend.makeOutput([...outer, m, n], "float32");
    const offset = (t: tf.TensorInfo) => heapOffset(backend, t);
    addon.gemm(heapBuffer(backend), offset(a), offset(b), offset(out), batchA, batchB, m, n, k, transposeA, transposeB);
    return out;
  };
  return { kernelName: tf.BatchMatMul, backendName: "wasm", setupFunc: fallback.setupFunc, kernelFunc };
}

/** exp where no fused kernel takes it (RepNoise's log-softmax over the vocabulary, the cached attention's softmax): the addon's vectorised exp_poly. */
function nativeExp(addon: BlasAddon, fallback: tf.KernelConfig): tf.KernelConfig {
  const kernelFunc: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype !== "float32") return fallback.kernelFunc(args);
    const backend = args.backend as unknown as WasmBackend;
    const out = backend.makeOutput([...x.shape], "float32");
    addon.exp(heapBuffer(backend), heapOffset(backend, x), heapOffset(backend, out), tf.util.sizeFromShape(x.shape));
    return out;
  };
  return { kernelName: tf.Exp, backendName: "wasm", setupFunc: fallback.setupFunc, kernelFunc };
}

/** Rows of a float32 matrix by int32 indices (axis 0, no batch dims: the embedding lookup); the stock kernel for the rest. */
function nativeGather(addon: BlasAddon, fallback: tf.KernelConfig): tf.KernelConfig {
  const kernelFunc: tf.KernelFunc = (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as unknown as { axis: number; batchDims: number };
    if (x.dtype !== "float32" || indices.dtype !== "int32" || x.shape.length !== 2 || axis !== 0 || batchDims !== 0) return fallback.kernelFunc(args);
    const [rows, width] = x.shape;
    const n = tf.util.sizeFromShape(indices.shape);
    const backend = args.backend as unknown as WasmBackend;
    const out = backend.makeOutput([...indices.shape, width], "float32");
    const offset = (t: tf.TensorInfo) => heapOffset(backend, t);
    const bad = addon.gather(heapBuffer(backend), offset(x), offset(indices), offset(out), rows, width, n);
    if (bad >= 0) {
      backend.disposeData(out.dataId);
      const value = new Int32Array(heapBuffer(backend), offset(indices), n)[bad];
      // The stock kernel's message.
      throw new Error(`GatherV2: the index value ${value} is not in [0, ${rows - 1}]`);
    }
    return out;
  };
  return { kernelName: tf.GatherV2, backendName: "wasm", setupFunc: fallback.setupFunc, kernelFunc };
}
