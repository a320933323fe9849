/**
 * The language-model loss as one kernel on the addon (native/blas/cross_entropy.c): softmax
 * cross-entropy over the vocabulary, forward and backward, instead of about a dozen wasm
 * kernels that each pass over the [tokens, vocab] logits (the largest tensor of a step on a
 * small model); the forward keeps the softmax, so the backward takes no exponential.
 * Registered under its own kernel names and run as an op with its gradient; model/loss.ts
 * uses it while the native kernels are active. For training, headLossKernel takes the head's
 * product with the loss.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, runFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineSoftmaxCrossEntropy";
const BACKWARD = "VaccineSoftmaxCrossEntropyGrad";
const HEAD_LOSS = "VaccineHeadLoss";

/** Registers the kernels on the wasm backend. */
export function registerCrossEntropyKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) });
  // Its gradient is computed forward, with the loss: no backward kernel.
  if (!tf.getKernel(HEAD_LOSS, "wasm")) tf.registerKernel({ kernelName: HEAD_LOSS, backendName: "wasm", kernelFunc: (args) => headLoss(addon, args) });
}

/**
 * scale * sum_i weight_i * -log softmax(logits_i)[target_i] for [rows, vocab] float32 logits,
 * int32 targets and float32 weights (0 skips a row, whose target is then not read). Throws
 * when a weighted row's target is outside the vocabulary.
 */
export function softmaxCrossEntropy(logits: tf.Tensor2D, target: tf.Tensor1D, weight: tf.Tensor1D, scale: number): tf.Scalar {
  return runFused<tf.Scalar>(FORWARD, { inputs: { logits }, constants: { target, weight } }, { scale }, ["target", "weight"], (dy, saved, [probs]) => [
    tf.engine().runKernel(BACKWARD, { dy, probs, target: saved.target, weight: saved.weight }, { scale }) as tf.Tensor,
  ]);
}

/**
 * softmaxCrossEntropy of the head's logits x W^T, for x [rows, width] and a frozen head W
 * [vocab, width], without the logits: the kernel takes them a block of rows at a time and
 * computes the gradient of x with the loss (dy times it is the backward pass), so a training
 * pass writes no [rows, vocab] tensor, and holds [rows, width] instead.
 */
export function headLossKernel(x: tf.Tensor2D, w: tf.Tensor2D, target: tf.Tensor1D, weight: tf.Tensor1D, scale: number): tf.Scalar {
  return runFused<tf.Scalar>(HEAD_LOSS, { inputs: { x }, constants: { w, target, weight } }, { scale }, [], (dy, _, [dx]) => [dx.mul(dy)]);
}

function headLoss(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { x, w, target, weight } = args.inputs as Record<"x" | "w" | "target" | "weight", tf.TensorInfo>;
  const { scale } = args.attrs as unknown as { scale: number };
  const [rows, width] = x.shape;
  const vocab = w.shape[0];
  const ok = x.dtype === "float32" && w.dtype === "float32" && target.dtype === "int32" && weight.dtype === "float32";
  if (!ok || x.shape.length !== 2 || !tf.util.arraysEqual(w.shape, [vocab, width]) || target.shape[0] !== rows || weight.shape[0] !== rows) {
    throw new Error(`headLoss: expected float32 x [rows, width], w [vocab, width], int32 target [rows] and float32 weight [rows]; got ${[x, w, target, weight].map((t) => `${t.dtype} [${t.shape}]`).join(", ")}`);
  }
  const backend = args.backend as unknown as WasmBackend;
  const loss = backend.makeOutput([], "float32");
  const dx = backend.makeOutput([rows, width], "float32");
  const heap = heapBuffer(backend);
  const o = (t: tf.TensorInfo) => heapOffset(backend, t);
  const total = addon.headLoss(heap, o(x), o(w), o(target), o(weight), o(dx), rows, width, vocab, scale);
  if (total < 0) {
    backend.disposeData(loss.dataId);
    backend.disposeData(dx.dataId);
    const row = -total - 1;
    throw new Error(`headLoss: target ${new Int32Array(heap, o(target), rows)[row]} of row ${row} is outside the vocabulary [0, ${vocab})`);
  }
  new Float32Array(heap, o(loss), 1)[0] = scale * total;
  return [loss, dx];
}

function forward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { logits, target, weight } = args.inputs as { logits: tf.TensorInfo; target: tf.TensorInfo; weight: tf.TensorInfo };
  const { scale } = args.attrs as unknown as { scale: number };
  const [rows, vocab] = logits.shape;
  if (logits.dtype !== "float32" || target.dtype !== "int32" || weight.dtype !== "float32" || logits.shape.length !== 2 || target.shape[0] !== rows || weight.shape[0] !== rows) {
    throw new Error(`softmaxCrossEntropy: expected float32 logits [rows, vocab], int32 target [rows] and float32 weight [rows]; got ${logits.dtype} [${logits.shape}], ${target.dtype} [${target.shape}], ${weight.dtype} [${weight.shape}]`);
  }
  const backend = args.backend as unknown as WasmBackend;
  const loss = backend.makeOutput([], "float32");
  const probs = backend.makeOutput([rows, vocab], "float32");
  const heap = heapBuffer(backend);
  const total = addon.crossEntropy(heap, heapOffset(backend, logits), heapOffset(backend, target), heapOffset(backend, weight), heapOffset(backend, probs), rows, vocab);
  if (total < 0) {
    backend.disposeData(loss.dataId);
    backend.disposeData(probs.dataId);
    const row = -total - 1;
    throw new Error(`softmaxCrossEntropy: target ${new Int32Array(heap, heapOffset(backend, target), rows)[row]} of row ${row} is outside the vocabulary [0, ${vocab})`);
  }
  new Float32Array(heap, heapOffset(backend, loss), 1)[0] = scale * total;
  return [loss, probs];
}

function backward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { dy, probs, target, weight } = args.inputs as Record<"dy" | "probs" | "target" | "weight", tf.TensorInfo>;
  const { scale } = args.attrs as unknown as { scale: number };
  const [rows, vocab] = probs.shape;
  const backend = args.backend as unknown as WasmBackend;
  const out = backend.makeOutput([rows, vocab], "float32");
  const heap = heapBuffer(backend);
  const dLoss = new Float32Array(heap, heapOffset(backend, dy), 1)[0];
  addon.crossEntropyGrad(heap, heapOffset(backend, probs), heapOffset(backend, target), heapOffset(backend, weight), heapOffset(backend, out), rows, vocab, scale * dLoss);
  return out;
}
