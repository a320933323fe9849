/**
 * A LoRA-adapted projection, y = x W^T + scaling (x * mask) A^T B^T, as one kernel forward
 * and one per gradient on the addon (native/blas/lora.c), instead of five or six wasm kernels
 * forward and about ten backward for every adapted projection of every layer. Registered
 * under its own kernel names with its gradient; LoraAdapter.linear uses it while the native
 * kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, type WasmBackend } from "./wasm-heap.ts";

const FORWARD = "VaccineLoraLinear";
const BACKWARD = "VaccineLoraLinearGrad";
/** The gradient kernel's `which` for each input. */
const WHICH = { x: 0, a: 1, b: 2, w: 3 } as const;

/** Registers both kernels on the wasm backend and the gradient. */
export function registerLoraLinearKernels(addon: BlasAddon): void {
  registerFused(FORWARD, BACKWARD, { forward: (args) => forward(addon, args), backward: (args) => backward(addon, args) }, {
    inputsToSave: ["x", "w", "a", "b", "mask"],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const [x, w, a, b, mask, xa] = saved;
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const { scaling } = attrs as unknown as { scaling: number };
      const grad = (which: number) => () => tf.engine().runKernel(BACKWARD, { dy: dOut, x, w, a, b, mask, xa }, { which, scaling }) as tf.Tensor;
      return { x: grad(WHICH.x), a: grad(WHICH.a), b: grad(WHICH.b), w: grad(WHICH.w) };
    },
  });
}

/**
 * x W^T + scaling (x * mask) A^T B^T for float32 x [..., in] (every leading axis a row: no
 * reshape ops), W [out, in], A [r, in], B [out, r] and a dropout mask of x's shape, or null
 * for none; y is [..., out].
 */
export function loraLinearKernel<T extends tf.Tensor>(x: T, w: tf.Tensor2D, a: tf.Tensor2D, b: tf.Tensor2D, scaling: number, mask: tf.Tensor | null): T {
  return tf.tidy(() => {
    // No mask is an empty one: a kernel's inputs are fixed by name.
    const [y] = tf.engine().runKernel(FORWARD, { x, w, a, b, mask: mask ?? tf.zeros([0]) }, { scaling }) as T[];
    return y;
  });
}

interface Geometry {
  n: number;
  inDim: number;
  outDim: number;
  r: number;
  hasMask: boolean;
}

function geometry(x: tf.TensorInfo, w: tf.TensorInfo, a: tf.TensorInfo, b: tf.TensorInfo, mask: tf.TensorInfo): Geometry {
  const inDim = x.shape[x.shape.length - 1];
  const n = inDim > 0 ? tf.util.sizeFromShape(x.shape) / inDim : 0;
  const [outDim, r] = b.shape;
  const hasMask = tf.util.sizeFromShape(mask.shape) > 0;
  const ok =
    [x, w, a, b, mask].every((t) => t.dtype === "float32") &&
    x.shape.length >= 1 &&
    [w, a, b].every((t) => t.shape.length === 2) &&
    tf.util.arraysEqual(w.shape, [outDim, inDim]) &&
    tf.util.arraysEqual(a.shape, [r, inDim]) &&
    (!hasMask || tf.util.arraysEqual(mask.shape, x.shape));
  if (!ok) {
    const shapes = [x, w, a, b, mask].map((t) => `${t.dtype} [${t.shape}]`).join(", ");
    throw new Error(`loraLinear: expected float32 x [..., in], w [out, in], a [r, in], b [out, r] and a mask of x's shape or empty; got ${shapes}`);
  }
  return { n, inDim, outDim, r, hasMask };
}

function forward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { x, w, a, b, mask } = args.inputs as Record<"x" | "w" | "a" | "b" | "mask", tf.TensorInfo>;
  const { scaling } = args.attrs as unknown as { scaling: number };
  const g = geometry(x, w, a, b, mask);
  const backend = args.backend as unknown as WasmBackend;
  const y = backend.makeOutput([...x.shape.slice(0, -1), g.outDim], "float32");
  const xa = backend.makeOutput([g.n, g.r], "float32");
  const o = (t: tf.TensorInfo) => heapOffset(backend, t);
  addon.loraLinear(heapBuffer(backend), o(x), o(w), o(a), o(b), g.hasMask ? o(mask) : 0, o(y), o(xa), g.n, g.inDim, g.outDim, g.r, g.hasMask ? 1 : 0, scaling);
  return [y, xa];
}

function backward(addon: BlasAddon, args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { dy, x, w, a, b, mask, xa } = args.inputs as Record<"dy" | "x" | "w" | "a" | "b" | "mask" | "xa", tf.TensorInfo>;
  const { which, scaling } = args.attrs as unknown as { which: number; scaling: number };
  const g = geometry(x, w, a, b, mask);
  const backend = args.backend as unknown as WasmBackend;
  const shape = [x.shape, a.shape, b.shape, w.shape][which];
  const out = backend.makeOutput([...shape], "float32");
  const o = (t: tf.TensorInfo) => heapOffset(backend, t);
  addon.loraLinearGrad(heapBuffer(backend), which, o(dy), o(x), o(w), o(a), o(b), g.hasMask ? o(mask) : 0, o(xa), o(out), g.n, g.inDim, g.outDim, g.r, g.hasMask ? 1 : 0, scaling);
  return out;
}
