/**
 * AdamW's update as one native call per parameter instead of about fourteen wasm kernels
 * (each a few microseconds of tfjs bookkeeping on a LoRA matrix of a thousand values): the
 * addon updates the parameter and both moments in place in the wasm heap, with the same
 * float32 operations in the same order as the tfjs ops, so the result is bit for bit the
 * stock path's. Also the clipping's global norm, and the sums of squares under it (which
 * Vaccine's reported perturbation norm reads too). Only while the native kernels are active
 * on the wasm backend.
 */
import * as tf from "@tensorflow/tfjs";
import { loadBlasAddon } from "./blas-addon.ts";
import { nativeKernelsActive } from "./kernels.ts";
import { heapBuffer, heapOffset, type WasmBackend } from "./wasm-heap.ts";

/** The update's constants as train/adamw.ts computes them (JS numbers; the addon rounds each to float32 as tfjs does). */
export interface AdamWConstants {
  /** Clipping coefficient the gradient is multiplied by; 1 when not clipped. */
  gradScale: number;
  /** 1 - lr * weightDecay, or 1 when the parameter does not decay. */
  decay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** sqrt(1 - beta2^step). */
  sqrtBc2: number;
  /** lr / (1 - beta1^step). */
  stepSize: number;
}

/**
 * Updates p, m and v in place and returns true; or returns false, touching nothing, when the
 * native path cannot take it (not active, another backend, not float32) or must not: a buffer
 * that another tensor shares (the copy-free Identity shares them) would change under it,
 * where the stock path's assign leaves that tensor its old values.
 */
export function nativeAdamWUpdate(p: tf.Variable, g: tf.Tensor, m: tf.Variable, v: tf.Variable, c: AdamWConstants): boolean {
  if (!nativeKernelsActive()) return false;
  const loaded = loadBlasAddon();
  if ("error" in loaded) return false;
  if ([p, g, m, v].some((t) => t.dtype !== "float32") || [g, m, v].some((t) => !tf.util.arraysEqual(t.shape, p.shape))) return false;
  const backend = tf.backend() as unknown as WasmBackend;
  const owned = [p, m, v].map((t) => backend.dataIdMap.get(t.dataId));
  const grad = backend.dataIdMap.get(g.dataId);
  if (!grad || owned.some((d) => !d || d.refCount !== 1)) return false;
  const [po, mo, vo] = owned.map((d) => d!.memoryOffset);
  loaded.addon.adamw(heapBuffer(backend), po, grad.memoryOffset, mo, vo, p.size, c.gradScale, c.decay, c.beta1, c.beta2, c.eps, c.sqrtBc2, c.stepSize);
  return true;
}

/**
 * The sum of squares over float32 tensors, in double by the addon straight from the wasm heap:
 * the gradient clipping's norm (and Vaccine's) without two kernels per tensor (a square and a
 * sum, about 110 a LoRA step). Undefined where the native path cannot take them.
 */
export function nativeSumOfSquares(tensors: tf.Tensor[]): number | undefined {
  if (!nativeKernelsActive() || tensors.some((t) => t.dtype !== "float32")) return undefined;
  const loaded = loadBlasAddon();
  if ("error" in loaded) return undefined;
  const backend = tf.backend() as unknown as WasmBackend;
  let sum = 0;
  for (const t of tensors) if (t.size > 0) sum += loaded.addon.sumSquares(heapBuffer(backend), heapOffset(backend, t), t.size);
  return sum;
}
