/**
 * Causal self-attention for training as one kernel forward and one backward on the addon
 * (native/blas/attention.c): rotary embedding, scores, the mask's bias, softmax and the
 * product with v, reading q, k and v in the projections' [B, T, heads * d] layout and
 * writing the context in it, instead of about 15 wasm kernels a layer forward (head
 * transposes, the rotation's products, the scores' scaling and bias, softmax) and 25
 * backward. Registered under its own kernel names and run as an op with its gradient;
 * LlamaModel's attention uses it for uncached passes while the native kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, runFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineAttention";
const BACKWARD = "VaccineAttentionGrad";

interface Attrs {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** Registers both kernels on the wasm backend. */
export function registerAttentionKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) });
}

/**
 * softmax(rope(q) rope(k)^T / sqrt(d) + bias) v per head, for q [B, T, heads * d], k and v
 * [B, T, kvHeads * d], bias [B, 1, T, T] and rotary tables cos, sin [T, d]; the context in
 * q's layout. Causal: a query never reads a later key whatever the bias (which adds the
 * padding), so the bias must mask them too.
 */
export function attentionKernel(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, bias: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D, attrs: Attrs): tf.Tensor3D {
  const named = attrs as unknown as tf.NamedAttrMap;
  // One backward kernel gives all three gradients (they share the scores' gradient).
  return runFused<tf.Tensor3D>(FORWARD, { inputs: { q, k, v }, constants: { bias, cos, sin } }, named, ["v", "cos", "sin"], (dy, saved, [qr, kr, probs]) =>
    tf.engine().runKernel(BACKWARD, { dy, qr, kr, v: saved.v, probs, cos: saved.cos, sin: saved.sin }, named) as tf.Tensor[],
  );
}

function forward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { q, k, v, bias, cos, sin } = args.inputs as Record<"q" | "k" | "v" | "bias" | "cos" | "sin", tf.TensorInfo>;
  const { heads, kvHeads, headDim } = args.attrs as unknown as Attrs;
  const [b, t] = q.shape;
  const ok =
    [q, k, v, bias, cos, sin].every((x) => x.dtype === "float32") &&
    tf.util.arraysEqual(q.shape, [b, t, heads * headDim]) &&
    tf.util.arraysEqual(k.shape, [b, t, kvHeads * headDim]) &&
    tf.util.arraysEqual(v.shape, k.shape) &&
    tf.util.arraysEqual(bias.shape, [b, 1, t, t]) &&
    tf.util.arraysEqual(cos.shape, [t, headDim]) &&
    tf.util.arraysEqual(sin.shape, cos.shape);
  if (!ok) {
    const shapes = [q, k, v, bias, cos, sin].map((x) => `${x.dtype} [${x.shape}]`).join(", ");
    throw new Error(`attention: expected float32 q [b, t, ${heads} x ${headDim}], k and v [b, t, ${kvHeads} x ${headDim}], bias [b, 1, t, t], cos and sin [t, ${headDim}]; got ${shapes}`);
  }
  const backend = args.backend as unknown as WasmBackend;
  const out = backend.makeOutput([...q.shape], "float32");
  const qr = backend.makeOutput([...q.shape], "float32");
  const kr = backend.makeOutput([...k.shape], "float32");
  // The softmax as the kernel keeps it: its causal blocks of queries by keys, about half of [t, t].
  const probs = backend.makeOutput([b, heads, addon.attentionProbs(t)], "float32");
  const o = (x: tf.TensorInfo) => heapOffset(backend, x);
  addon.attention(heapBuffer(backend), o(q), o(k), o(v), o(bias), o(cos), o(sin), o(out), o(qr), o(kr), o(probs), b, t, heads, kvHeads, headDim);
  return [out, qr, kr, probs];
}

function backward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { dy, qr, kr, v, probs, cos, sin } = args.inputs as Record<"dy" | "qr" | "kr" | "v" | "probs" | "cos" | "sin", tf.TensorInfo>;
  const { heads, kvHeads, headDim } = args.attrs as unknown as Attrs;
  const [b, t] = qr.shape;
  const backend = args.backend as unknown as WasmBackend;
  const dq = backend.makeOutput([...qr.shape], "float32");
  const dk = backend.makeOutput([...kr.shape], "float32");
  const dv = backend.makeOutput([...v.shape], "float32");
  const o = (x: tf.TensorInfo) => heapOffset(backend, x);
  addon.attentionGrad(heapBuffer(backend), o(dy), o(qr), o(kr), o(v), o(probs), o(cos), o(sin), o(dq), o(dk), o(dv), b, t, heads, kvHeads, headDim);
  return [dq, dk, dv];
}
