/**
 * Matrix products for the model, and the gradient of tfjs's BatchMatMul kernel replaced
 * for the whole process, for two reasons:
 * - wasm runs matMul with a transposed operand about 10x slower than an explicit transpose
 *   plus a plain matMul (512x128 by 128x384: 35 ms against 3.5 ms), and the stock gradient
 *   uses transpose flags;
 * - the gradient of each input is computed only when asked for. tfjs prunes inputs that do
 *   not depend on what is differentiated, so frozen base weights (LoRA training) and every
 *   weight in Vaccine's pass 1 (gradient w.r.t. the perturbation only) cost no dW product.
 * With the native OpenBLAS kernel (native/kernels.ts) a transposed operand is free, so
 * the flags go to the kernel instead of a transpose op (4x128 SFT step: 128 ms -> 108 ms).
 */
import * as tf from "@tensorflow/tfjs";
import { nativeKernelsActive } from "../native/kernels.ts";

/** Swaps the last two axes. */
export function swapLast(x: tf.Tensor): tf.Tensor {
  const perm = x.shape.map((_, i) => i);
  [perm[x.rank - 2], perm[x.rank - 1]] = [perm[x.rank - 1], perm[x.rank - 2]];
  return x.transpose(perm);
}

tf.registerGradient({
  kernelName: tf.BatchMatMul,
  inputsToSave: ["a", "b"],
  gradFunc: (dy, saved, attrs) => {
    const [a, b] = saved;
    const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const d = dy as tf.Tensor;
    if (nativeKernelsActive()) {
      const mm = (x: tf.Tensor, y: tf.Tensor, tx: boolean, ty: boolean) => tf.matMul(x, y, tx, ty);
      if (!transposeA && !transposeB) return { a: () => mm(d, b, false, true), b: () => mm(a, d, true, false) };
      if (!transposeA && transposeB) return { a: () => mm(d, b, false, false), b: () => mm(d, a, true, false) };
      if (transposeA && !transposeB) return { a: () => mm(b, d, false, true), b: () => mm(a, d, false, false) };
      return { a: () => mm(b, d, true, true), b: () => mm(d, a, true, true) };
    }
    const mm = (x: tf.Tensor, y: tf.Tensor) => tf.matMul(x, y);
    const t = swapLast;
    if (!transposeA && !transposeB) return { a: () => mm(d, t(b)), b: () => mm(t(a), d) };
    if (!transposeA && transposeB) return { a: () => mm(d, b), b: () => mm(t(d), a) };
    if (transposeA && !transposeB) return { a: () => mm(b, t(d)), b: () => mm(a, d) };
    return { a: () => mm(t(b), t(d)), b: () => mm(t(d), t(a)) };
  },
});

/** a x b (with the gradient above). */
export function matmul<T extends tf.Tensor>(a: T, b: tf.Tensor): T {
  return tf.matMul(a, b) as T;
}

/** x W^T for a PyTorch-layout [out, in] weight: a transpose flag only where it is free (native). */
export function linearT<T extends tf.Tensor>(x: T, w: tf.Tensor): T {
  return (nativeKernelsActive() ? tf.matMul(x, w, false, true) : matmul(x, swapLast(w))) as T;
}
