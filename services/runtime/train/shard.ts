/**
 * One thread's part of a data-parallel step (data-parallel.ts): rows [from, to) of a batch of
 * `rows` rows, and sums over all the shards. A thread with no rows of the batch (from === to)
 * computes on a stand-in row that counts for nothing.
 */
import * as tf from "@tensorflow/tfjs";

export interface Shard {
  from: number;
  to: number;
  rows: number;
  /** The sums over all shards of the values each passes, the same on every shard; all must call it at the same points. */
  sum(values: ArrayLike<number>): Float32Array;
}

/**
 * Whole-batch [rows, T, D] tensors from each shard's own rows of them: every shard places its
 * rows in zeros, and the sum over the shards is the whole (adding zeros is exact).
 */
export function gatherRows(own: tf.Tensor3D[], shard: Shard): tf.Tensor3D[] {
  if (own.length === 0) return [];
  const [, t, d] = own[0].shape;
  const size = shard.rows * t * d;
  const placed = new Float32Array(own.length * size);
  if (shard.to > shard.from) {
    own.forEach((x, i) => placed.set((x.dataSync() as Float32Array).subarray(0, (shard.to - shard.from) * t * d), i * size + shard.from * t * d));
  }
  const whole = shard.sum(placed);
  return own.map((_, i) => tf.tensor3d(whole.subarray(i * size, (i + 1) * size), [shard.rows, t, d]));
}

/** The shard's rows of a whole-batch [rows, T, D] tensor; one zero row for a stand-in. */
export function shardRows(whole: tf.Tensor3D, shard: Shard): tf.Tensor3D {
  const [, t, d] = whole.shape;
  if (shard.to === shard.from) return tf.zeros([1, t, d]);
  return whole.slice([shard.from, 0, 0], [shard.to - shard.from, t, d]);
}
