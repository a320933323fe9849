/**
 * A decoder layer's attention block (RMSNorm, q/k/v projections, causal attention, o
 * projection) and MLP block (RMSNorm, gate/up projections, SwiGLU, down projection) as one
 * kernel each forward and one backward on the addon (native/blas/block.c), every projection
 * LoRA-adapted or not. The same functions as the single fused kernels, composed in C: a layer
 * of a training step was about 36 kernel calls, each with tfjs's bookkeeping (outputs, saved
 * clones, tape entries, gradient sums), and is 4. LlamaModel uses them for uncached passes
 * over frozen weights while the native kernels are active.
 */
import * as tf from "@tensorflow/tfjs";
import type { BlasAddon } from "./blas-addon.ts";
import { heapBuffer, heapOffset, registerFused, runFused, type WasmBackend } from "./wasm-heap.ts";

const ATTENTION = "VaccineAttentionBlock";
const ATTENTION_GRAD = "VaccineAttentionBlockGrad";
const MLP = "VaccineMlpBlock";
const MLP_GRAD = "VaccineMlpBlockGrad";

/** One projection of a block: its weight [out, in] and, when adapted, LoRA's A [r, in], B [out, r] and dropout mask (of the input's shape). */
export interface BlockProjection {
  w: tf.Tensor2D;
  adapter?: { a: tf.Tensor2D; b: tf.Tensor2D; mask: tf.Tensor | null };
}

/**
 * Per batch row, 1 + the position of its last real token (int32 [B]): the blocks skip the
 * positions from there on (nothing reads them: attention is causal), writing x (+ delta) there
 * with the residual and 0 without; their gradient is dy with the residual, else 0. Undefined: every
 * position is computed.
 */
export type RowEnds = tf.Tensor1D | undefined;

/** Which gradients the backward computes: the block's input's (x), and the adapters' A and B. */
export interface BlockGradients {
  input: boolean;
  adapters: boolean;
}

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** Registers the four kernels on the wasm backend. */
export function registerDecoderBlockKernels(addon: BlasAddon): void {
  registerFused(ATTENTION, ATTENTION_GRAD, {
    forward: (args) => blockForward((h, o) => addon.attentionBlock(h, o), (a) => attentionOperands(addon, a), args),
    backward: (args) => blockBackward((h, o) => addon.attentionBlockGrad(h, o), (a) => attentionOperands(addon, a), 4, args),
  });
  registerFused(MLP, MLP_GRAD, {
    forward: (args) => blockForward((h, o) => addon.mlpBlock(h, o), mlpOperands, args),
    backward: (args) => blockBackward((h, o) => addon.mlpBlockGrad(h, o), mlpOperands, 3, args),
  });
}

/**
 * o(attention(q(n), k(n), v(n))) with n = RMSNorm(x) for x [B, T, hidden]: the attention
 * block's output A_l; with `residual`, x + A_l (+ its delta) instead, the layer's residual
 * stream after attention. bias [B, 1, T, T], cos and sin [T, headDim].
 */
export function attentionBlockKernel(
  x: tf.Tensor3D,
  norm: tf.Tensor1D,
  eps: number,
  projections: readonly [BlockProjection, BlockProjection, BlockProjection, BlockProjection],
  rotary: { bias: tf.Tensor4D; cos: tf.Tensor2D; sin: tf.Tensor2D },
  shape: AttentionShape,
  scaling: number,
  grads: BlockGradients,
  ends: RowEnds,
  residual?: { delta?: tf.Tensor },
): tf.Tensor3D {
  const attrs = { eps, scaling, residual: residual !== undefined, ...shape } as unknown as tf.NamedAttrMap;
  const ops = blockOperands(x, norm, projections, grads, residual?.delta, { ...rotary, ...rowEndsOperand(ends) });
  // bias and the delta are read by the forward only (the backward reads the softmax; the delta's gradient is dy).
  return runBlock(ATTENTION, ATTENTION_GRAD, ops, attrs, grads, ops.reads.filter((n) => n !== "bias" && n !== "delta"));
}

/**
 * down(silu(gate(n)) * up(n)) with n = RMSNorm(x) for x [B, T, hidden]: the MLP block's output;
 * with `residual`, x plus it.
 */
export function mlpBlockKernel(
  x: tf.Tensor3D,
  norm: tf.Tensor1D,
  eps: number,
  projections: readonly [BlockProjection, BlockProjection, BlockProjection],
  scaling: number,
  grads: BlockGradients,
  residual: boolean,
  ends: RowEnds,
): tf.Tensor3D {
  const ops = blockOperands(x, norm, projections, grads, undefined, rowEndsOperand(ends));
  return runBlock(MLP, MLP_GRAD, ops, { eps, scaling, residual }, grads, ops.reads);
}

/** The ends as a named operand, none without. */
const rowEndsOperand = (ends: RowEnds): Record<string, tf.Tensor> => (ends ? { ends } : {});

interface Operands {
  inputs: Record<string, tf.Tensor>;
  constants: Record<string, tf.Tensor>;
  reads: string[];
}

/**
 * The kernel's operands by name (x, norm, w0.., a0.., b0.., m0.., and the extra ones): the
 * differentiable inputs in the gradients' order (x, the delta, then each adapter's A and B),
 * the rest constants.
 */
function blockOperands(x: tf.Tensor, norm: tf.Tensor, projections: readonly BlockProjection[], grads: BlockGradients, delta: tf.Tensor | undefined, extra: Record<string, tf.Tensor>): Operands {
  const inputs: Record<string, tf.Tensor> = {};
  const constants: Record<string, tf.Tensor> = { norm, ...extra };
  (grads.input ? inputs : constants).x = x;
  if (delta) inputs.delta = delta;
  projections.forEach((p, i) => {
    constants[`w${i}`] = p.w;
    if (!p.adapter) return;
    const target = grads.adapters ? inputs : constants;
    target[`a${i}`] = p.adapter.a;
    target[`b${i}`] = p.adapter.b;
    if (p.adapter.mask) constants[`m${i}`] = p.adapter.mask;
  });
  return { inputs, constants, reads: [...Object.keys(inputs), ...Object.keys(constants)] };
}

function runBlock(forward: string, backward: string, ops: Operands, attrs: tf.NamedAttrMap, grads: BlockGradients, reads: string[]): tf.Tensor3D {
  const all = { ...ops.constants, ...ops.inputs };
  if (Object.keys(ops.inputs).length === 0) {
    // Nothing to differentiate: no tape entry, and what the backward would read is freed.
    const [y, ...kept] = tf.engine().runKernel(forward, all, attrs) as tf.Tensor[];
    tf.dispose(kept);
    return y as tf.Tensor3D;
  }
  const gradAttrs = { ...attrs, input: grads.input, adapters: grads.adapters };
  // Variables (the weights, the adapters' A and B) outlive the backward pass: read there as they
  // are rather than saved, which would clone each (a tape entry apiece, about ten a block).
  const held = Object.fromEntries(reads.filter((n) => all[n] instanceof tf.Variable).map((n) => [n, all[n]]));
  const saved = reads.filter((n) => !(n in held));
  // The backward kernel runs when the input's or an adapter's gradient is asked for; the delta's is dy.
  const kernelGrads = Object.keys(ops.inputs).some((n) => n !== "delta");
  return runFused<tf.Tensor3D>(forward, ops, attrs, saved, (dy, read, kept) => {
    const out = kernelGrads ? (tf.engine().runKernel(backward, { ...held, ...read, dy, ...keptByName(kept) }, gradAttrs) as tf.Tensor[]) : [];
    if (ops.inputs.delta) out.splice(grads.input ? 1 : 0, 0, dy.clone());
    return out;
  });
}

const keptByName = (kept: tf.Tensor[]) => Object.fromEntries(kept.map((t, i) => [`k${i}`, t]));

type Args = Parameters<tf.KernelFunc>[0];
type Infos = Record<string, tf.TensorInfo | undefined>;

/** The projections' operands (w, a, b, mask, r, scaling each) after checking their shapes against rows n and each one's [in, out]. */
function projectionOperands(kernel: string, inputs: Infos, dims: [number, number][], n: number, scaling: number): Operand[] {
  return dims.flatMap(([inDim, outDim], i) => {
    const w = inputs[`w${i}`]!, a = inputs[`a${i}`], b = inputs[`b${i}`], mask = inputs[`m${i}`];
    const r = a ? a.shape[0] : 0;
    const ok =
      [w, a, b, mask].every((t) => !t || t.dtype === "float32") &&
      tf.util.arraysEqual(w.shape, [outDim, inDim]) &&
      !a === !b &&
      (!a || (tf.util.arraysEqual(a.shape, [r, inDim]) && tf.util.arraysEqual(b!.shape, [outDim, r]))) &&
      (!mask || (a && tf.util.sizeFromShape(mask.shape) === n * inDim && mask.shape[mask.shape.length - 1] === inDim));
    if (!ok) {
      const shapes = [w, a, b, mask].map((t) => (t ? `${t.dtype} [${t.shape}]` : "none")).join(", ");
      throw new Error(`${kernel}: projection ${i} expects float32 w [${outDim}, ${inDim}], a [r, ${inDim}] and b [${outDim}, r] or neither, a mask of ${n} x ${inDim} or none; got ${shapes}`);
    }
    return [w, a, b, mask, r, scaling];
  });
}

/** x [B, T, hidden] and its norm's weight [hidden], checked. */
function inputGeometry(kernel: string, inputs: Infos): { b: number; t: number; hidden: number } {
  const { x, norm } = inputs as Record<"x" | "norm", tf.TensorInfo>;
  if (x.dtype !== "float32" || x.shape.length !== 3 || norm.dtype !== "float32" || !tf.util.arraysEqual(norm.shape, [x.shape[2]])) {
    throw new Error(`${kernel}: expected float32 x [b, t, hidden] and norm [hidden]; got ${x.dtype} [${x.shape}] and ${norm.dtype} [${norm.shape}]`);
  }
  const [b, t, hidden] = x.shape;
  return { b, t, hidden };
}

/** The operand list as the addon reads it: byte offsets of tensors, -1 for absent ones, numbers as they are. */
function packed(backend: WasmBackend, list: Operand[]): Float64Array {
  return Float64Array.from(list, (o) => (o === undefined ? -1 : typeof o === "number" ? o : heapOffset(backend, o)));
}

/** The adapters' kept x A products, one [n, r] after another (at least one element: an empty tensor has no heap offset). */
function xaSize(inputs: Infos, projections: number, n: number): number {
  let ranks = 0;
  for (let i = 0; i < projections; i++) ranks += inputs[`a${i}`]?.shape[0] ?? 0;
  return Math.max(1, n * ranks);
}

/** The gradients' outputs: dx when asked for, then each adapter's dA and dB when asked for, in that order. */
function gradientOutputs(backend: WasmBackend, inputs: Infos, count: number, attrs: { input: boolean; adapters: boolean }): { list: (tf.TensorInfo | undefined)[]; outputs: tf.TensorInfo[] } {
  const outputs: tf.TensorInfo[] = [];
  const make = (t: tf.TensorInfo | undefined, wanted: boolean) => {
    if (!t || !wanted) return undefined;
    const out = backend.makeOutput([...t.shape], "float32");
    outputs.push(out);
    return out;
  };
  const list = [make(inputs.x, attrs.input)];
  for (let i = 0; i < count; i++) list.push(make(inputs[`a${i}`], attrs.adapters), make(inputs[`b${i}`], attrs.adapters));
  return { list, outputs };
}

interface BlockAttrs {
  eps: number;
  scaling: number;
  residual: boolean;
  heads: number;
  kvHeads: number;
  headDim: number;
  input: boolean;
  adapters: boolean;
}

function attentionOperands(addon: BlasAddon, args: Args): ReturnType<BlockOperands> {
  const inputs = args.inputs as Infos;
  const { eps, scaling, heads, kvHeads, headDim, residual } = args.attrs as unknown as BlockAttrs;
  const { b, t, hidden } = inputGeometry(ATTENTION, inputs);
  const { bias, cos, sin } = inputs;
  const n = b * t, qd = heads * headDim, kvd = kvHeads * headDim;
  if (cos && (!tf.util.arraysEqual(cos.shape, [t, headDim]) || !tf.util.arraysEqual(sin!.shape, cos.shape))) {
    throw new Error(`${ATTENTION}: expected cos and sin [${t}, ${headDim}]; got [${cos.shape}] and [${sin!.shape}]`);
  }
  if (bias && !tf.util.arraysEqual(bias.shape, [b, 1, t, t])) throw new Error(`${ATTENTION}: expected bias [${b}, 1, ${t}, ${t}]; got [${bias.shape}]`);
  const projections = projectionOperands(ATTENTION, inputs, [[hidden, qd], [hidden, kvd], [hidden, kvd], [qd, hidden]], n, scaling);
  const head = [b, t, heads, kvHeads, headDim, hidden, eps, inputs.x, inputs.norm, bias, cos, sin, ...projections];
  // y, the normed x, its r, v, rotated q and k, the softmax, the context, the x A products.
  const kept = [[b, t, hidden], [b, t, hidden], [b, t], [b, t, kvd], [b, t, qd], [b, t, kvd], [b, heads, addon.attentionProbs(t)], [b, t, qd], [xaSize(inputs, 4, n)]];
  const { delta } = inputs;
  if (delta && (!residual || delta.dtype !== "float32" || !tf.util.arraysEqual(delta.shape, [b, t, hidden]))) {
    throw new Error(`${ATTENTION}: a delta needs the residual and float32 [${b}, ${t}, ${hidden}]; got ${delta.dtype} [${delta.shape}]`);
  }
  return { head, kept, tail: [residual ? 1 : 0, delta, checkedEnds(ATTENTION, inputs, b)] };
}

function mlpOperands(args: Args): ReturnType<BlockOperands> {
  const inputs = args.inputs as Infos;
  const { eps, scaling, residual } = args.attrs as unknown as BlockAttrs;
  const { b, t, hidden } = inputGeometry(MLP, inputs);
  const n = b * t, f = inputs.w0!.shape[0];
  const projections = projectionOperands(MLP, inputs, [[hidden, f], [hidden, f], [f, hidden]], n, scaling);
  const head = [n, hidden, f, eps, inputs.x, inputs.norm, ...projections];
  // y, the normed x, its r, gate, up, sigmoid(gate), the SwiGLU product, the x A products.
  const kept = [[b, t, hidden], [b, t, hidden], [b, t], [b, t, f], [b, t, f], [b, t, f], [b, t, f], [xaSize(inputs, 3, n)]];
  return { head, kept, tail: [residual ? 1 : 0, t, checkedEnds(MLP, inputs, b)] };
}

/** The ends operand (RowEnds), checked: int32 [b] (the addon checks each against t). */
function checkedEnds(kernel: string, inputs: Infos, b: number): tf.TensorInfo | undefined {
  const { ends } = inputs;
  if (ends && (ends.dtype !== "int32" || !tf.util.arraysEqual(ends.shape, [b]))) throw new Error(`${kernel}: expected int32 ends [${b}]; got ${ends.dtype} [${ends.shape}]`);
  return ends;
}

type Run = (heap: ArrayBuffer, operands: Float64Array) => void;
type Operand = tf.TensorInfo | number | undefined;
/** A block's operands as the addon lists them: those before the kept outputs, the kept outputs' shapes, those after. */
type BlockOperands = (args: Args) => { head: Operand[]; kept: number[][]; tail: Operand[] };

/** A block's forward: its value and what the backward reads (the kept outputs), made and written by `run`. */
function blockForward(run: Run, operands: BlockOperands, args: Args): tf.TensorInfo[] {
  const backend = args.backend as unknown as WasmBackend;
  const { head, kept, tail } = operands(args);
  const outs = kept.map((shape) => backend.makeOutput(shape, "float32"));
  run(heapBuffer(backend), packed(backend, [...head, ...outs, ...tail]));
  return outs;
}

/** A block's backward: from dy and the kept outputs (k0, k1, ...), the gradients asked for, in the inputs' order. */
function blockBackward(run: Run, operands: BlockOperands, projections: number, args: Args): tf.TensorInfo[] {
  const backend = args.backend as unknown as WasmBackend;
  const inputs = args.inputs as Infos;
  const { head, kept, tail } = operands(args);
  const grads = gradientOutputs(backend, inputs, projections, args.attrs as unknown as BlockAttrs);
  const read = ["dy", ...kept.slice(1).map((_, i) => `k${i}`)].map((name) => inputs[name]);
  run(heapBuffer(backend), packed(backend, [...head, ...read, ...tail, ...grads.list]));
  return grads.outputs;
}
