/**
 * Perplexity of a loaded checkpoint on plain texts, for the collapse check
 * (docs/method.md#collapse-check): exp of the mean next-token cross-entropy over every
 * real token after the first (bos, when the tokenizer adds it, is context only) and the eos
 * that ends each text, as pre-training scored them (data/collate.ts, mode "all"). Texts are
 * cut at the model's positions.
 */
import * as tf from "@tensorflow/tfjs";
import { collate } from "../data/collate.ts";
import { causalLmLossWithCount } from "../model/loss.ts";
import type { LoadedCheckpoint } from "./load.ts";

const BATCH = 8;

export interface Perplexity {
  perplexity: number;
  /** Tokens predicted. */
  tokens: number;
}

export function perplexity(loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">, texts: readonly string[]): Perplexity {
  const maxLength = loaded.model.config.maxPositionEmbeddings;
  let nll = 0;
  let tokens = 0;
  for (let start = 0; start < texts.length; start += BATCH) {
    const b = collate(texts.slice(start, start + BATCH), loaded.tokenizer, { maxLength, mode: "all" });
    const ids = tf.tensor2d(b.inputIds, [b.batch, b.seqLen], "int32");
    const mask = tf.tensor2d(b.attentionMask, [b.batch, b.seqLen], "int32");
    const labels = tf.tensor2d(b.labels, [b.batch, b.seqLen], "int32");
    try {
      const { loss, tokens: n } = tf.tidy(() => {
        const { logits } = loaded.model.forward(ids, mask, { lora: loaded.adapter });
        return causalLmLossWithCount(logits, labels);
      });
      nll += loss.dataSync()[0] * n;
      tokens += n;
      loss.dispose();
    } finally {
      tf.dispose([ids, mask, labels]);
    }
  }
  return { perplexity: Math.exp(nll / Math.max(1, tokens)), tokens };
}
