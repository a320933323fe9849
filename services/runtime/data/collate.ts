/**
 * Turns examples into padded id matrices for causal-LM training, as the reference does:
 * sequence = [bos] + tokens(prompt + output) + eos, right padding, loss on response tokens only.
 * Plain arrays (not tensors) so any backend can wrap them.
 */
import { IGNORE_INDEX } from "../model/loss.ts";
import { bosPrefix, type Tokenizer } from "../tokenizer.ts";
import { formatPrompt, type Example } from "./template.ts";

export { IGNORE_INDEX };

export interface CollateOptions {
  /** Longest sequence kept, special tokens included (default 200, the reference's). */
  maxLength?: number;
  /**
   * "response": labels on output tokens and eos only (fine-tuning, alignment);
   * "all": labels on every real token of an example (pre-training).
   * A plain string is a text document and is fully labelled in both modes.
   */
  mode?: "response" | "all";
}

export interface Batch {
  /** Row-major [batch, seqLen]. */
  inputIds: Int32Array;
  attentionMask: Int32Array;
  /** Token id where the loss applies, IGNORE_INDEX elsewhere; not shifted (the loss shifts). */
  labels: Int32Array;
  batch: number;
  seqLen: number;
  /** Rows left with no labelled token because the prompt alone filled maxLength. */
  unsupervised: number;
  /** Rows cut at maxLength. */
  truncated: number;
}

/** One example as a row of a batch, before padding. */
export interface EncodedRow {
  ids: number[];
  /** Position of the first labelled token. */
  supervisedFrom: number;
  truncated: boolean;
}

/**
 * An example's ids as the reference makes them (docs/method.md#data-template): the prompt and
 * the output tokenized as one text, after bos; the first `promptLength` ids (bos and as many as
 * the prompt alone has) are the prompt's. Tokenized apart, a tokenizer that marks a word's start
 * (SentencePiece's "▁", as Llama's) would begin every answer with a space the reference's lacks.
 */
export function exampleIds(tokenizer: Tokenizer, example: Example): { ids: number[]; promptLength: number } {
  const bos = bosPrefix(tokenizer);
  const prompt = formatPrompt(example);
  return { ids: [...bos, ...tokenizer.encode(prompt + example.output)], promptLength: bos.length + tokenizer.encode(prompt).length };
}

/**
 * Collates a batch. Truncation cuts from the right at maxLength, so a long output loses
 * its tail and its eos. When the prompt alone reaches maxLength the row is kept (so
 * batch rows still match the examples) with every label IGNORE_INDEX: it contributes
 * nothing to the loss and is counted in `unsupervised`.
 */
export function collate(items: ReadonlyArray<Example | string>, tokenizer: Tokenizer, opts: CollateOptions = {}): Batch {
  return padRows(encodeRows(items, tokenizer, opts), tokenizer.padId);
}

/** The rows collate pads, one per item (tokenized once, they can be batched again without the tokenizer). */
export function encodeRows(items: ReadonlyArray<Example | string>, tokenizer: Tokenizer, opts: CollateOptions = {}): EncodedRow[] {
  const maxLength = opts.maxLength ?? 200;
  const mode = opts.mode ?? "response";
  if (!Number.isInteger(maxLength) || maxLength < 1) throw new RangeError(`maxLength must be a positive integer, got ${maxLength}`);
  const bos = bosPrefix(tokenizer);
  return items.map((item) => {
    const { ids: text, promptLength } = typeof item === "string" ? { ids: [...bos, ...tokenizer.encode(item)], promptLength: 0 } : exampleIds(tokenizer, item);
    const supervisedFrom = mode === "all" ? 0 : promptLength;
    const ids = [...text, tokenizer.eosId];
    const truncated = ids.length > maxLength;
    return { ids: truncated ? ids.slice(0, maxLength) : ids, supervisedFrom, truncated };
  });
}

/** Rows right-padded with padId into one batch; labels from each row's supervisedFrom on. */
export function padRows(rows: readonly EncodedRow[], padId: number): Batch {
  if (rows.length === 0) throw new RangeError("cannot collate an empty batch");
  const seqLen = Math.max(...rows.map((r) => r.ids.length));
  const batch = rows.length;
  const inputIds = new Int32Array(batch * seqLen).fill(padId);
  const attentionMask = new Int32Array(batch * seqLen);
  const labels = new Int32Array(batch * seqLen).fill(IGNORE_INDEX);
  rows.forEach(({ ids, supervisedFrom }, b) => {
    const base = b * seqLen;
    ids.forEach((id, t) => {
      inputIds[base + t] = id;
      attentionMask[base + t] = 1;
      if (t >= supervisedFrom) labels[base + t] = id;
    });
  });
  const truncated = rows.filter((r) => r.truncated).length;
  const unsupervised = rows.filter((r) => r.ids.length <= r.supervisedFrom).length;
  return { inputIds, attentionMask, labels, batch, seqLen, unsupervised, truncated };
}
