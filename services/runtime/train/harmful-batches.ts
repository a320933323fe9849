/**
 * Batches of the harmful data the defences read besides the training data (T-Vaccine's
 * probe, Booster's h, RepNoise's harmful pass): collated exactly as the training batches,
 * in a seeded order that is a function of (seed, index) like the training data's
 * (batches.ts). The cursor into the harmful data (batches read so far) is therefore a
 * function of the step: a resumed run reads the batches an uninterrupted one would. The
 * cursor is still written to the training state and checked on resume, so a state whose
 * position disagrees with its step is refused rather than silently realigned.
 */
import { collate } from "../data/collate.ts";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import { hash32 } from "../rng.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { batchAt } from "./batches.ts";
import { toTensors, type TrainOptions } from "./loop.ts";
import type { TrainBatch } from "./step.ts";

export class HarmfulBatches {
  private readonly seed: number;

  constructor(
    private readonly data: ReadonlyArray<Example>,
    private readonly tokenizer: Tokenizer,
    private readonly options: Pick<TrainOptions, "batchSize" | "maxSequenceLength" | "seed">,
  ) {
    if (data.length === 0) throw new RangeError("the harmful dataset is empty");
    // Its own order: the same seed must not pair harmful batch k with training batch k's permutation.
    this.seed = hash32(`${options.seed >>> 0}:harmful`);
  }

  /** Batch `index` (0-based) of the seeded order; the caller disposes it (disposeBatch). */
  at(index: number): TrainBatch {
    const { indices } = batchAt(this.data.length, this.options.batchSize, this.seed, index);
    return toTensors(collate(indices.map((i) => this.data[i]), this.tokenizer, { maxLength: this.options.maxSequenceLength }));
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
