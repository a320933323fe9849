/**
 * One thread's part of a data-parallel step (data-parallel.ts): shard `rank` of `shards`,
 * which holds the same contiguous range of the rows of every batch the step reads (the
 * training batch, a defence's harmful batch), and sums over all the shards. A thread with no
 * rows of a batch computes on a stand-in row that counts for nothing.
 */
import * as tf from "@tensorflow/tfjs";
import type { Batch } from "../data/collate.ts";
import { IGNORE_INDEX } from "../model/loss.ts";
import { labelledTokens, toTensors } from "./loop.ts";
import type { TrainBatch } from "./step.ts";

export interface Shard {
  rank: number;
  shards: number;
  /** The sums over all shards of the values each passes, the same on every shard; all must call it at the same points. */
  sum(values: ArrayLike<number>): Float32Array;
}

/** Rows [from, to) of a batch of `rows` rows. */
export interface RowWindow {
  from: number;
  to: number;
  rows: number;
}

/** The shard's contiguous, near-equal share of `rows` rows. */
export function rowWindow(rows: number, { rank, shards }: Pick<Shard, "rank" | "shards">): RowWindow {
  return { from: Math.floor((rank * rows) / shards), to: Math.floor(((rank + 1) * rows) / shards), rows };
}

/**
 * A term of a step that is not a sum over the batch's rows (Lisa's proximal term, RepNoise's
 * MMD) is counted on this shard only.
 */
export const isLead = (shard: Shard): boolean => shard.rank === 0;

/**
 * The shard's rows of a whole collated batch as tensors (its seqLen kept, so each row computes
 * as in the whole batch), with its window (TrainBatch.rows) and its loss scaled to its share of
 * the batch's supervised tokens (TrainBatch.shareOfBatch), so the shards' losses and gradients
 * add up to the whole batch's. Without rows: one row with no attention and no label.
 */
export function shardOf(batch: Batch, shard: Pick<Shard, "rank" | "shards">): TrainBatch {
  const t = batch.seqLen;
  const w = rowWindow(batch.batch, shard);
  const cut = (a: Int32Array) => a.slice(w.from * t, w.to * t);
  const own: Batch =
    w.to === w.from
      ? { inputIds: new Int32Array(t), attentionMask: new Int32Array(t), labels: new Int32Array(t).fill(IGNORE_INDEX), batch: 1, seqLen: t, unsupervised: 1, truncated: 0 }
      : { inputIds: cut(batch.inputIds), attentionMask: cut(batch.attentionMask), labels: cut(batch.labels), batch: w.to - w.from, seqLen: t, unsupervised: 0, truncated: 0 };
  const out = toTensors(own);
  // Every shard has the whole batch: no exchange for its token count.
  const whole = labelledTokens(batch);
  out.shareOfBatch = whole > 0 ? out.tokens / whole : 0;
  out.rows = w;
  return out;
}

/**
 * The sums over all shards of tensors (the same shapes on every shard) and of numbers, in one
 * exchange.
 */
export function sumOverShards(shard: Shard, tensors: readonly tf.Tensor[], numbers: readonly number[] = []): { tensors: tf.Tensor[]; numbers: number[] } {
  const size = tensors.reduce((n, x) => n + x.size, 0);
  const flat = new Float32Array(size + numbers.length);
  let offset = 0;
  for (const x of tensors) {
    flat.set(x.dataSync() as Float32Array, offset);
    offset += x.size;
  }
  flat.set(numbers, size);
  const sums = shard.sum(flat);
  offset = 0;
  const out = tensors.map((x) => {
    const s = tf.tensor(sums.subarray(offset, offset + x.size), x.shape);
    offset += x.size;
    return s;
  });
  return { tensors: out, numbers: Array.from(sums.subarray(size)) };
}

/**
 * Whole-batch [rows, T, D] tensors from each shard's own rows of them (window w): every shard
 * places its rows in zeros, and the sum over the shards is the whole (adding zeros is exact).
 */
export function gatherRows(own: tf.Tensor3D[], shard: Shard, w: RowWindow): tf.Tensor3D[] {
  if (own.length === 0) return [];
  const [, t, d] = own[0].shape;
  const size = w.rows * t * d;
  const placed = new Float32Array(own.length * size);
  if (w.to > w.from) {
    own.forEach((x, i) => placed.set((x.dataSync() as Float32Array).subarray(0, (w.to - w.from) * t * d), i * size + w.from * t * d));
  }
  const whole = shard.sum(placed);
  return own.map((_, i) => tf.tensor3d(whole.subarray(i * size, (i + 1) * size), [w.rows, t, d]));
}

/** The window's rows of a whole-batch [rows, T, D] tensor; one zero row for a stand-in. */
export function shardRows(whole: tf.Tensor3D, w: RowWindow): tf.Tensor3D {
  const [, t, d] = whole.shape;
  if (w.to === w.from) return tf.zeros([1, t, d]);
  return whole.slice([w.from, 0, 0], [w.to - w.from, t, d]);
}
