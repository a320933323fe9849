/**
 * The optional OpenBLAS addon (native/blas/, built by `npm run build:native` at install).
 * Loading it is allowed to fail: a missing build, compiler or libopenblas is a reason to stay
 * on the wasm kernels, never a crash.
 */
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface BlasAddon {
  /**
   * out[i] = op(a[i]) x op(b[i]) on float32 row-major operands at byte offsets in `heap`;
   * a batch of 1 is broadcast; op(a) is [m, k], op(b) is [k, n].
   */
  gemm(heap: ArrayBuffer, aOffset: number, bOffset: number, outOffset: number, batchA: number, batchB: number, m: number, n: number, k: number, transposeA: boolean, transposeB: boolean): void;
  /**
   * For [rows, vocab] float32 logits, int32 targets and float32 weights: writes each row's
   * softmax (zeros where the weight is 0) and returns sum_i w_i (lse_i - logits[i, target_i]),
   * or -(i + 1) when weighted row i's target is outside [0, vocab).
   */
  crossEntropy(heap: ArrayBuffer, logitsOffset: number, targetOffset: number, weightOffset: number, probsOffset: number, rows: number, vocab: number): number;
  /** out[i, j] = scale * w_i * (probs[i, j] - [j == target_i]): the gradient of scale times crossEntropy's sum. */
  crossEntropyGrad(heap: ArrayBuffer, probsOffset: number, targetOffset: number, weightOffset: number, outOffset: number, rows: number, vocab: number, scale: number): void;
  /**
   * The head's logits x W^T and their softmax cross-entropy a block of rows at a time, for x
   * [rows, width], W [vocab, width]: returns crossEntropy's sum (or -(row + 1) for a bad target)
   * and writes dx, the gradient of scale times it with respect to x.
   */
  headLoss(heap: ArrayBuffer, xOffset: number, wOffset: number, targetOffset: number, weightOffset: number, dxOffset: number, rows: number, width: number, vocab: number, scale: number): number;
  /** RMSNorm of [rows, width] float32 x with weight [width]: out = x * r * w, r = 1 / sqrt(mean(x^2) + eps) written per row. */
  rmsNorm(heap: ArrayBuffer, xOffset: number, weightOffset: number, outOffset: number, rOffset: number, rows: number, width: number, eps: number): void;
  /** RMSNorm's gradient with respect to x, from dy, x, the weight and the forward's r. */
  rmsNormGrad(heap: ArrayBuffer, dyOffset: number, xOffset: number, weightOffset: number, rOffset: number, outOffset: number, rows: number, width: number): void;
  /**
   * A LoRA projection for x [n, in], W [out, in], A [r, in], B [out, r] and, when hasMask, a
   * dropout mask [n, in]: xa = scaling (x * mask) A^T [n, r] and y = x W^T + xa B^T [n, out].
   */
  loraLinear(heap: ArrayBuffer, xOffset: number, wOffset: number, aOffset: number, bOffset: number, maskOffset: number, yOffset: number, xaOffset: number, n: number, inDim: number, outDim: number, r: number, hasMask: number, scaling: number): void;
  /** loraLinear's gradient with respect to x (which 0), A (1), B (2) or W (3), from dy [n, out] and the forward's xa. */
  loraLinearGrad(heap: ArrayBuffer, which: number, dyOffset: number, xOffset: number, wOffset: number, aOffset: number, bOffset: number, maskOffset: number, xaOffset: number, outOffset: number, n: number, inDim: number, outDim: number, r: number, hasMask: number, scaling: number): void;
  /**
   * Causal self-attention for q [b, t, heads * d], k and v [b, t, kvHeads * d], bias
   * [b, t, t] and rotary tables cos, sin [t, d]: writes the context out [b, t, heads * d],
   * the rotated q and k (qr, kr) and the softmax probs [b, heads, attentionProbs(t)].
   */
  attention(heap: ArrayBuffer, qOffset: number, kOffset: number, vOffset: number, biasOffset: number, cosOffset: number, sinOffset: number, outOffset: number, qrOffset: number, krOffset: number, probsOffset: number, b: number, t: number, heads: number, kvHeads: number, d: number): void;
  /** The floats a head's softmax takes in attention's probs for t positions: its causal blocks of queries by keys. */
  attentionProbs(t: number): number;
  /** attention's gradients with respect to q, k (before the rotation) and v, from dy [b, t, heads * d] and what the forward wrote. */
  attentionGrad(heap: ArrayBuffer, dyOffset: number, qrOffset: number, krOffset: number, vOffset: number, probsOffset: number, cosOffset: number, sinOffset: number, dqOffset: number, dkOffset: number, dvOffset: number, b: number, t: number, heads: number, kvHeads: number, d: number): void;
  /**
   * A decoder layer's attention block, forward: RMSNorm, the q, k and v projections (LoRA-adapted
   * or not), causal attention and the o projection, on the operands native/blas/block.c lists
   * (byte offsets, sizes; -1 for an absent one).
   */
  attentionBlock(heap: ArrayBuffer, operands: Float64Array): void;
  /** The attention block's gradients with respect to its input and the adapters' A and B. */
  attentionBlockGrad(heap: ArrayBuffer, operands: Float64Array): void;
  /** A decoder layer's MLP block, forward: RMSNorm, the gate and up projections, SwiGLU and the down projection. */
  mlpBlock(heap: ArrayBuffer, operands: Float64Array): void;
  /** The MLP block's gradients with respect to its input and the adapters' A and B. */
  mlpBlockGrad(heap: ArrayBuffer, operands: Float64Array): void;
  /** out = gate * s * up over n float32 values, writing s = sigmoid(gate) too. */
  swiglu(heap: ArrayBuffer, gateOffset: number, upOffset: number, outOffset: number, sigmoidOffset: number, n: number): void;
  /** The SwiGLU product's gradient with respect to gate (which 0) or up (which 1), from dy and the forward's sigmoid. */
  swigluGrad(heap: ArrayBuffer, dyOffset: number, gateOffset: number, upOffset: number, sigmoidOffset: number, outOffset: number, n: number, which: number): void;
  /** The sum of the squares of n float32 values at a byte offset in `heap`, in double. */
  sumSquares(heap: ArrayBuffer, offset: number, n: number): number;
  /** out = expf(in) over n float32 values at byte offsets in `heap`. */
  exp(heap: ArrayBuffer, inOffset: number, outOffset: number, n: number): void;
  /** Values [skip, skip + n) of LoRA dropout's mask stream from its generators' 32 seed words (model/lora.ts's dropoutMask), n float32 at a byte offset in `heap`. */
  dropoutMask(heap: ArrayBuffer, outOffset: number, n: number, skip: number, rate: number, seeds: Uint32Array): void;
  /**
   * out[i] = table[indices[i]] for a [rows, width] float32 table and n int32 indices at byte
   * offsets in `heap`; returns -1, or the position of the first index outside [0, rows) (then
   * nothing is written).
   */
  gather(heap: ArrayBuffer, tableOffset: number, indicesOffset: number, outOffset: number, rows: number, width: number, n: number): number;
  /**
   * One AdamW update in place of n float32 values at byte offsets in `heap` (parameter,
   * gradient, first and second moment), the same float32 operations as the tfjs ops in
   * train/adamw.ts: g' = g * gradScale; m = m * beta1 + g' * (1 - beta1);
   * v = v * beta2 + g'^2 * (1 - beta2); p = p * decay - m / (sqrt(v) / sqrtBc2 + eps) * stepSize.
   */
  adamw(heap: ArrayBuffer, pOffset: number, gOffset: number, mOffset: number, vOffset: number, n: number, gradScale: number, decay: number, beta1: number, beta2: number, eps: number, sqrtBc2: number, stepSize: number): void;
  /** The bytes of the kernels' scratch buffers, one per thread that used one, freed when its thread's environment ends. */
  scratchBytes(): number;
  setThreads(n: number): void;
  threads(): number;
  /** OpenBLAS's build and core, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH ... SkylakeX MAX_THREADS=64". */
  config(): string;
}

/** What OpenBLAS reads for its thread count. */
const THREAD_VARIABLES = ["OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"];

const ADDON = join("native", "blas", "build", "Release", "vaccine_blas.node");

let loaded: { addon: BlasAddon } | { error: string } | undefined;
/** OPENBLAS_CORETYPE as the environment gave it when the addon loaded (chooseCoreType sets and removes its own). */
let givenCoreType: string | undefined;

/** The addon, loaded once per thread; or why it cannot be. */
export function loadBlasAddon(): { addon: BlasAddon } | { error: string } {
  loaded ??= load();
  return loaded;
}

function load(): { addon: BlasAddon } | { error: string } {
  const path = findAddon(dirname(fileURLToPath(import.meta.url)));
  if (!path) return { error: `${ADDON} is not built (npm run build:native: needs a C compiler and libopenblas-dev)` };
  givenCoreType = process.env.OPENBLAS_CORETYPE;
  const chosen = chooseCoreType();
  try {
    const addon = createRequire(import.meta.url)(path) as BlasAddon;
    // One thread unless the operator says otherwise: OpenBLAS's own threads would not share
    // the training thread's lower priority, and on 2 shared cores a second one lost (README).
    if (!THREAD_VARIABLES.some((v) => process.env[v])) addon.setThreads(1);
    return { addon };
  } catch (err) {
    return { error: `${ADDON} does not load (${(err as Error).message.split("\n")[0]})` };
  } finally {
    // Read once at load; child processes keep their own detection.
    if (chosen) delete process.env.OPENBLAS_CORETYPE;
  }
}

/**
 * The package root holds native/ (found by native/build.mjs, which no other folder has); this
 * file sits at services/runtime/native/ or dist/services/runtime/native/, and dist/ holds a
 * copy of package.json of its own, so the root is not the first folder with one.
 */
function findAddon(from: string): string | undefined {
  for (let dir = from; dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, "native", "build.mjs"))) return existsSync(join(dir, ADDON)) ? join(dir, ADDON) : undefined;
  }
  return undefined;
}

/**
 * OpenBLAS picks its kernels from the CPU model and falls back to Prescott (SSE3, 8x slower
 * sgemm here) on models newer than its release, such as this machine's Xeon under Debian's
 * 0.3.21. So unless the operator set OPENBLAS_CORETYPE, it is set from the CPU's flags
 * before the library loads (it reads the variable once, at load). The core in use is in
 * config(). Returns the value set, if any.
 */
function chooseCoreType(): string | undefined {
  if (process.env.OPENBLAS_CORETYPE !== undefined) return undefined;
  const chosen = coreTypeFor(cpuFlags());
  if (chosen) process.env.OPENBLAS_CORETYPE = chosen;
  return chosen;
}

/** The OpenBLAS core for a CPU's flags: SkylakeX with AVX-512, Haswell with AVX2 and FMA, else none (OpenBLAS's own detection). */
export function coreTypeFor(flags: ReadonlySet<string>): string | undefined {
  if (["avx512f", "avx512bw", "avx512vl", "avx512dq"].every((f) => flags.has(f))) return "SkylakeX";
  if (["avx2", "fma"].every((f) => flags.has(f))) return "Haswell";
  return undefined;
}

/** This CPU's flags (/proc/cpuinfo); empty where there is none. */
export function cpuFlags(): Set<string> {
  try {
    const line = readFileSync("/proc/cpuinfo", "utf8").match(/^flags\s*:(.*)$/m)?.[1] ?? "";
    return new Set(line.trim().split(/\s+/));
  } catch {
    return new Set();
  }
}

/**
 * For the start log: an OPENBLAS_CORETYPE from the environment that is not the core this CPU's
 * flags choose. It is obeyed (an operator may pin a core, e.g. for the same results on mixed
 * nodes), but it can cost much: on an AVX-512 machine whose environment set Haswell, sgemm ran
 * at 118 GFLOP/s on one core against 216 with SkylakeX (README, performance).
 */
export function coreTypeNote(given = givenCoreType, flags: ReadonlySet<string> = cpuFlags()): string | undefined {
  const best = coreTypeFor(flags);
  if (given === undefined || best === undefined || given.toLowerCase() === best.toLowerCase()) return undefined;
  return `OPENBLAS_CORETYPE=${given} is set; this CPU's flags choose ${best}`;
}
