/**
 * Batches of the harmful data the defences read besides the training data (T-Vaccine's
 * probe, Booster's h, RepNoise's harmful pass): collated exactly as the training batches,
 * in a seeded order that is a function of (seed, index) like the training data's
 * (batches.ts). The cursor into the harmful data (batches read so far) is therefore a
 * function of the step: a resumed run reads the batches an uninterrupted one would. The
 * cursor is still written to the training state and checked on resume, so a state whose
 * position disagrees with its step is refused rather than silently realigned.
 */
import { encodeRows, padRows, type EncodedRow } from "../data/collate.ts";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import { hash32 } from "../rng.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { batchAt } from "./batches.ts";
import { toTensors, type TrainOptions } from "./loop.ts";
import { shardOf, type Shard } from "./shard.ts";
import type { TrainBatch } from "./step.ts";

/** The harmful data tokenized, as plain data: what a data-parallel thread makes its batches from. */
export interface EncodedHarmful {
  rows: EncodedRow[];
  padId: number;
  batchSize: number;
  seed: number;
}

export class HarmfulBatches {
  constructor(readonly encoded: EncodedHarmful) {
    if (encoded.rows.length === 0) throw new RangeError("the harmful dataset is empty");
  }

  /** The examples tokenized once, in their own seeded order (options.seed). */
  static of(data: ReadonlyArray<Example>, tokenizer: Tokenizer, options: Pick<TrainOptions, "batchSize" | "maxSequenceLength" | "seed">): HarmfulBatches {
    return new HarmfulBatches({
      rows: encodeRows(data, tokenizer, { maxLength: options.maxSequenceLength }),
      padId: tokenizer.padId,
      batchSize: options.batchSize,
      // Its own order: the same seed must not pair harmful batch k with training batch k's permutation.
      seed: hash32(`${options.seed >>> 0}:harmful`),
    });
  }

  /**
   * Batch `index` (0-based) of the seeded order, or a shard's rows of it (shardOf); the caller
   * disposes it (disposeBatch).
   */
  at(index: number, shard?: Shard): TrainBatch {
    const { rows, padId, batchSize, seed } = this.encoded;
    const { indices } = batchAt(rows.length, batchSize, seed, index);
    const batch = padRows(indices.map((i) => rows[i]), padId);
    return shard ? shardOf(batch, shard) : toTensors(batch);
  }
}

const CURSOR = "harmful.cursor";

/** The training-state entry of the cursor: the number of harmful batches read. */
export function cursorState(read: number): HostTensors {
  return new Map([[CURSOR, { shape: [1], data: Float32Array.of(read) }]]);
}

/** Refuses a training state whose harmful cursor is not the one its step implies. */
export function checkCursor(state: HostTensors, expected: number): void {
  const saved = state.get(CURSOR)?.data[0];
  if (saved !== expected) throw new Error(`training state: ${CURSOR} is ${saved}, the step implies ${expected}`);
}
