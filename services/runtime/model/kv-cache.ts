/**
 * The key/value cache of decoding (model/generate.ts): what it holds, and how one forward
 * call over a cache is laid out (its positions, its attention bias, where its keys go).
 * llama.ts's forward() reads and writes it.
 */
import * as tf from "@tensorflow/tfjs";

/**
 * Per-layer keys (after RoPE) and values, [B, kvHeads, S, headDim]. Row b's cached positions
 * are its first lengths[b] slots, each at its own index, and every slot after them holds
 * zero: a row's keys sit exactly where they would if it were decoded alone and its padding
 * only trails, so batching rows of different lengths changes no row's sums. S grows by
 * CACHE_GROWTH slots at a time, so a decoding step writes its keys into slots that exist
 * (one copy of the cache) rather than growing it too. forward() writes into it and disposes
 * what it replaces.
 */
export class KvCache {
  keys: tf.Tensor4D[] = [];
  values: tf.Tensor4D[] = [];
  /** Positions cached per row (empty before the first call). */
  lengths: number[] = [];

  /** The longest row's length. */
  get length(): number {
    return Math.max(0, ...this.lengths);
  }

  /** Slots per row, free ones included. */
  get capacity(): number {
    return this.keys[0]?.shape[2] ?? 0;
  }

  /** Replaces the contents (tensors must already be kept out of any tidy). */
  replace(keys: tf.Tensor4D[], values: tf.Tensor4D[], lengths: number[]): void {
    this.dispose();
    this.keys = keys;
    this.values = values;
    this.lengths = lengths;
  }

  /**
   * Keeps these rows (ascending): a finished sequence leaves the batch. Its slots stay,
   * zero in the rows that do not use them. Rows are copied as runs of consecutive rows:
   * wasm's gather costs several times a copy.
   */
  keepRows(rows: number[]): void {
    if (rows.length === 0) return this.dispose();
    const runs: [number, number][] = [];
    for (const r of rows) {
      const last = runs[runs.length - 1];
      if (last && last[0] + last[1] === r) last[1]++;
      else runs.push([r, 1]);
    }
    const pick = (x: tf.Tensor4D) =>
      tf.tidy(() => tf.concat(runs.map(([from, n]) => x.slice([from, 0, 0, 0], [n, -1, -1, -1])), 0) as tf.Tensor4D);
    this.replace(this.keys.map(pick), this.values.map(pick), rows.map((r) => this.lengths[r]));
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
    this.keys = [];
    this.values = [];
    this.lengths = [];
  }
}

/** Free slots a decoding step adds to a full cache: a copy of the cache every this many steps rather than every step. */
export const CACHE_GROWTH = 16;

/** One cached call, worked out on the host from the cache and the call's mask. */
export interface CacheStep {
  cache: KvCache;
  /** Per row, the position (and slot) of its first token in this call. */
  starts: number[];
  /** Per row, the cached length once this call's real tokens are in. */
  lengths: number[];
  /** Slots after this call: a prefill appends its tokens to full rows; a step writes one token per row into free slots. */
  slots: number;
}

export function cacheStep(cache: KvCache, attentionMask: tf.Tensor2D): CacheStep {
  const [b, t] = attentionMask.shape;
  if (cache.lengths.length > 0 && cache.lengths.length !== b) {
    throw new Error(`cache holds batch ${cache.lengths.length}, inputs have batch ${b}`);
  }
  const mask = attentionMask.dataSync();
  const counts = Array.from({ length: b }, (_, r) => {
    let n = 0;
    while (n < t && mask[r * t + n] !== 0) n++;
    for (let i = n; i < t; i++) if (mask[r * t + i] !== 0) throw new Error("with a cache, attentionMask must be right-padded (each row's real tokens first)");
    return n;
  });
  const starts = cache.lengths.length > 0 ? cache.lengths : new Array<number>(b).fill(0);
  const longest = Math.max(...starts);
  const lengths = starts.map((s, r) => s + counts[r]);
  if (t === 1) {
    if (counts.includes(0)) throw new Error("with a cache, a one-token call needs a real token in every row");
    return { cache, starts, lengths, slots: longest < cache.capacity ? cache.capacity : longest + CACHE_GROWTH };
  }
  if (starts.some((s) => s !== longest)) throw new Error("a cache whose rows have different lengths takes one token per row");
  return { cache, starts, lengths, slots: longest + t };
}

/** Additive bias [B, 1, T, S] of a cached call: a row's token i sees the row's slots up to its own position. */
export function cachedBias(step: CacheStep, t: number): tf.Tensor4D {
  const b = step.starts.length;
  const s = step.slots;
  const bias = new Float32Array(b * t * s).fill(-1e9);
  step.starts.forEach((start, r) => {
    for (let i = 0; i < t; i++) bias.fill(0, (r * t + i) * s, (r * t + i) * s + start + i + 1);
  });
  return tf.tensor4d(bias, [b, 1, t, s]);
}

/**
 * Where a cached call's keys go. A one-token step: the [row, head, slot] of each row's
 * token, for a scatter. A prefill: [B, 1, S, 1], 1 on each row's real slots, or null when
 * no row is padded.
 */
export function placement(step: CacheStep, t: number, kvHeads: number): tf.Tensor | null {
  const b = step.starts.length;
  if (t === 1) {
    const at = new Int32Array(b * kvHeads * 3);
    for (let r = 0; r < b; r++) for (let h = 0; h < kvHeads; h++) at.set([r, h, step.starts[r]], (r * kvHeads + h) * 3);
    return tf.tensor2d(at, [b * kvHeads, 3], "int32");
  }
  if (step.lengths.every((n) => n === step.slots)) return null;
  const m = new Float32Array(b * step.slots);
  step.lengths.forEach((n, r) => m.fill(1, r * step.slots, r * step.slots + n));
  return tf.tensor4d(m, [b, 1, step.slots, 1]);
}

/** The cache's keys (or values) [B, kv, S, hd] with this call's [B, kv, T, hd] written in (see KvCache). */
export function written(step: CacheStep, place: tf.Tensor | null, old: tf.Tensor4D | undefined, fresh: tf.Tensor4D): tf.Tensor4D {
  const [b, kv, t, hd] = fresh.shape;
  if (t > 1) {
    // Every row is full (a prefill): append, and zero what padding tokens left after their rows.
    const all = old ? tf.concat([old.slice([0, 0, 0, 0], [-1, -1, step.starts[0], -1]), fresh], 2) : fresh;
    return place ? all.mul(place) : all;
  }
  const free = old?.shape[2] ?? 0;
  const room = step.slots > free ? (old ? tf.concat([old, tf.zeros([b, kv, step.slots - free, hd])], 2) : tf.zeros([b, kv, step.slots, hd])) : old!;
  return tf.tensorScatterUpdate(room, place as tf.Tensor2D, fresh.reshape([b * kv, hd])) as tf.Tensor4D;
}
